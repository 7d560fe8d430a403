"""Reading one TFDS dataset as numpy examples: the only place vprompt imports TensorFlow (Datasets).

:class:`TfdsReader` is what :func:`~.convert.prepare_vtab1k` reads from; anything with the same six
members (``version``, ``needs_manual_download``, ``needs_download``, ``prepare``, ``counts``, ``examples``)
can stand in for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

INSTALL_HINT = "vprompt data prepare needs TensorFlow Datasets: pip install 'vprompt[prepare]'"


def default_tfds_dir() -> Path:
    """Where TFDS keeps its data unless told otherwise: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _tfds():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return tfds


class TfdsReader:
    """One TFDS dataset (``name[/config]:version``) under ``data_dir``.

    A version TFDS no longer offers (e.g. ``oxford_iiit_pet:3.*.*`` in TFDS 4.9, which has only 4.0.0) falls
    back to TFDS's current version of that dataset; ``note`` then says so and ``version`` is the one read.
    """

    def __init__(self, spec: str, data_dir: str | os.PathLike | None = None):
        tfds = _tfds()
        self.spec = spec
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else default_tfds_dir()
        self.note = ""
        try:
            self.builder = tfds.builder(spec, data_dir=str(self.data_dir))
        except (AssertionError, ValueError) as e:
            if "cannot be loaded at version" not in str(e):
                raise
            name = spec.split(":")[0]
            self.builder = tfds.builder(name, data_dir=str(self.data_dir))
            self.note = (
                f"TFDS {tfds.__version__} no longer has {spec}; read version {self.builder.version} "
                "instead (the examples' order may differ from the official VTAB-1k export)"
            )
        self.version = str(self.builder.version)
        self.manual_dir = self.data_dir / "downloads" / "manual"

    @property
    def manual_instructions(self) -> str:
        return (self.builder.MANUAL_DOWNLOAD_INSTRUCTIONS or "").strip()

    def needs_manual_download(self) -> bool:
        """True when TFDS cannot download this dataset itself and its files are not in ``manual_dir`` yet."""
        if not self.builder.MANUAL_DOWNLOAD_INSTRUCTIONS or self.builder.is_prepared():
            return False
        return not (self.manual_dir.is_dir() and any(self.manual_dir.iterdir()))

    def needs_download(self) -> bool:
        """True when the dataset is not prepared in ``data_dir`` yet (:meth:`prepare` would download)."""
        return not self.builder.is_prepared()

    def prepare(self) -> None:
        """Download and prepare the dataset (once; TFDS keeps it under ``data_dir``)."""
        tfds = _tfds()
        config = tfds.download.DownloadConfig(manual_dir=str(self.manual_dir))
        self.builder.download_and_prepare(download_config=config)

    def counts(self) -> dict[str, int]:
        return {name: split.num_examples for name, split in self.builder.info.splits.items()}

    def examples(self, split: str, start: int, stop: int) -> Iterator[dict]:
        """The examples ``split[start:stop]`` in TFDS's deterministic order, as numpy dicts."""
        tfds = _tfds()
        ds = self.builder.as_dataset(split=f"{split}[{start}:{stop}]", shuffle_files=False)
        yield from tfds.as_numpy(ds)
