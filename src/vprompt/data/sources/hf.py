"""``hf:<what>[?image=<column>&label=<column>&config=<name>]``: data read with Hugging Face ``datasets``.

``<what>`` is ``imagefolder:<dir>``, a ``save_to_disk`` folder, ``.parquet`` files or a Hub name.
Design notes: ``docs/design.md``, section ``vprompt/data/sources/hf.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch

from ..datasets import DataError, to_rgb
from .base import DatasetInfo, Source, register_source, with_held_out

OPTIONS = ("image", "label", "config")
VAL_NAMES = ("validation", "valid", "val", "dev")
INSTALL_HINT = "hf: data specs need the Hugging Face datasets library: pip install 'vprompt[hf]'"


def with_columns(spec: str, image: str | None = None, label: str | None = None) -> str:
    """``spec`` with ``--image-column`` / ``--label-column`` added as its ``image=`` / ``label=`` options."""
    if image is None and label is None:
        return spec
    if not spec.strip().lower().startswith("hf:"):
        raise ValueError(f"--image-column and --label-column apply to hf: data specs only, not {spec!r}")
    extra = "&".join(f"{k}={v}" for k, v in (("image", image), ("label", label)) if v is not None)
    return f"{spec}{'&' if '?' in spec else '?'}{extra}"


def _datasets():
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return datasets


def parse(arg: str) -> tuple[str, dict[str, str]]:
    target, _, query = arg.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"hf:{arg}: unknown option(s) {', '.join(unknown)}; options: {', '.join(OPTIONS)}")
    if not target:
        raise ValueError(
            "hf: needs what to read: hf:<hub name>, hf:<folder>, hf:<file.parquet>, hf:imagefolder:<dir>"
        )
    return target, options


def _local(target: str, root: Path | None) -> Path | None:
    path = Path(target).expanduser()
    candidates = [path] if path.is_absolute() else ([root / path] if root is not None else []) + [path]
    return next((p for p in candidates if p.exists()), None)


def load_hf(target: str, root: Path | None, config: str | None):
    """The ``datasets.DatasetDict`` (or ``Dataset``) ``target`` names, and what kind of source it was."""
    datasets = _datasets()
    if target.startswith("imagefolder:"):
        folder = _local(target.removeprefix("imagefolder:"), root)
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(f"hf:{target}: image folder not found")
        return datasets.load_dataset("imagefolder", data_dir=str(folder)), "imagefolder"
    path = _local(target, root)
    if path is not None:
        try:
            if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
                return datasets.load_from_disk(str(path)), "save_to_disk"
            if path.is_file() and path.suffix == ".parquet":
                return datasets.load_dataset("parquet", data_files={"train": str(path)}), "parquet"
            if path.is_dir() and any(path.rglob("*.parquet")):
                return datasets.load_dataset("parquet", data_dir=str(path)), "parquet"
        except (IndexError, ValueError) as e:  # what datasets raises for a dataset without rows
            raise DataError(
                f"hf:{target}: datasets cannot read {path} ({type(e).__name__}: {_line(e)}); "
                "is it empty (no rows)?"
            ) from None
        raise DataError(
            f"{path}: neither a save_to_disk folder (dataset_dict.json / state.json) nor parquet files; "
            "for a folder of class sub-folders use hf:imagefolder:<dir> or folder:<dir>"
        )
    try:
        return datasets.load_dataset(target, config), "hub"
    except (ConnectionError, OSError) as e:
        offline = (
            os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or "offline" in str(e).lower()
        )
        why = "the Hub is off (HF_HUB_OFFLINE is set)" if offline else "the Hub cannot be reached"
        raise FileNotFoundError(
            f"hf:{target}: no such local folder or file, and {why} ({e}). On a machine that is online, "
            f"save it with datasets.load_dataset({target!r}).save_to_disk(DIR), then use hf:DIR"
        ) from None


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _pick(spec: str, features, wanted: str | None, kind, what: str, flag: str) -> str:
    if wanted is not None:
        if wanted not in features:
            raise DataError(f"{spec}: no {what} column {wanted!r}; columns: {', '.join(features)}")
        return wanted
    found = [name for name, f in features.items() if isinstance(f, kind)]
    if not found:
        raise DataError(
            f"{spec}: no {kind.__name__} column to use as the {what}; columns: {', '.join(features)}; "
            f"name one with {flag}"
        )
    return found[0]


def _as_images(ds, column: str, spec: str):
    """``ds`` with ``column`` (image paths or bytes) read as images; its first row is decoded to see it is."""
    datasets = _datasets()
    feature = ds.features[column]
    try:
        ds = ds.cast_column(column, datasets.Image())
        ds[0][column].load()
    except Exception as e:  # pyarrow (a cast that cannot be), PIL, a missing file: many kinds
        kind = getattr(feature, "dtype", type(feature).__name__)
        raise DataError(
            f"{spec}: column {column!r} ({kind}) does not hold images ({type(e).__name__}: {_line(e)}); "
            "name the image column with --image-column (image=)"
        ) from None
    return ds


class HFSplit(torch.utils.data.Dataset):
    """One split of a ``datasets.Dataset``: ``(image, label)`` from its image and label columns."""

    def __init__(
        self, ds, image: str, label: str, num_classes: int, source: str, transform=None, values=None
    ):
        self.ds, self.image, self.label = ds, image, label
        self.num_classes, self.source, self.transform = num_classes, source, transform
        raw = labels = np.asarray(list(ds[label]))
        if labels.size and labels.dtype.kind not in "iu":
            raise DataError(
                f"{source}: label column {label!r} holds {labels.dtype} values, not class indices"
            )
        if values and labels.size:  # plain integers: class i is the i-th of the sorted values
            index = np.minimum(np.searchsorted(values, labels), len(values) - 1)
            labels = np.where(np.asarray(values)[index] == labels, index, -1)
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes)) if labels.size else []
        if len(bad):
            raise DataError(
                f"{source}: label {int(raw[bad[0]])} at row {int(bad[0])} out of range [0, {num_classes})"
            )
        self.targets = labels.astype(np.int64).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self.targets):
            raise IndexError(index)
        try:
            image = self.ds[int(index)][self.image]
        except Exception as e:  # decoding errors come from PIL or pyarrow, of many kinds
            raise DataError(
                f"{self.source}: row {index}: cannot decode image ({type(e).__name__}: {e})"
            ) from e
        image = to_rgb(image)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


class HFSource(Source):
    def __init__(self, spec: str, arg: str, root: Path | None):
        datasets = _datasets()
        target, options = parse(arg)
        loaded, self.kind = load_hf(target, root, options.get("config"))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict(train=loaded)
        self.native: dict[str, object] = {}
        for name, ds in loaded.items():
            key = "val" if name.lower() in VAL_NAMES else name.lower()
            if key in ("train", "val", "test") and key not in self.native:
                self.native[key] = ds
        if "train" not in self.native:
            raise DataError(f"{spec}: no train split (splits: {', '.join(loaded)})")
        empty = [name for name, ds in self.native.items() if len(ds) == 0]
        if empty:
            raise DataError(f"{spec}: the {' and '.join(empty)} split holds no rows (an empty dataset)")
        features = self.native["train"].features
        self.image = _pick(
            spec, features, options.get("image"), datasets.Image, "image", "--image-column (image=)"
        )
        self.label = _pick(
            spec, features, options.get("label"), datasets.ClassLabel, "label", "--label-column (label=)"
        )
        for name, ds in self.native.items():
            if not isinstance(ds.features[self.image], datasets.Image):  # e.g. raw bytes or paths
                self.native[name] = _as_images(ds, self.image, spec)
        feature = features[self.label]
        self.values = None
        if isinstance(feature, datasets.ClassLabel):
            names = tuple(str(n) for n in feature.names)
        else:
            values = [v for ds in self.native.values() for v in ds[self.label]]
            if not all(isinstance(v, int | np.integer) for v in values):
                raise DataError(f"{spec}: label column {self.label!r} is neither a ClassLabel nor integers")
            self.values = sorted({int(v) for v in values if v >= 0})
            names = tuple(f"class_{v}" for v in self.values)
        native = tuple(s for s in ("train", "val", "test") if s in self.native)
        self.held_out = "val" not in self.native
        splits = with_held_out(native) if self.held_out else ("train", "val", "trainval", *native[2:])
        self.spec = spec
        self.info = DatasetInfo(spec, "hf", target, len(names), names, splits, root)

    def _dataset(self, split, transform):
        if split == "trainval":
            ds = _datasets().concatenate_datasets([self.native["train"], self.native["val"]])
        else:
            ds = self.native[split]
        source = f"{self.spec} [{split}]"
        return HFSplit(ds, self.image, self.label, self.info.num_classes, source, transform, self.values)


@register_source("hf", usage="hf:<hub name | folder | file.parquet | imagefolder:<dir>>")
def _hf(spec: str, arg: str, root: Path | None) -> Source:
    return HFSource(spec, arg, root)
