"""``textile``: 2,000 simulated textile images with defects (250×250 RGB) from PyPI ``conformal-clip-data``.

Three classes, one folder each under ``conformal_clip_data/data/textile_images/simulated/``:
``nominal`` (no defect, 1,000 images), ``local`` (a small local defect, 500) and ``global`` (a defect
over the whole texture, 500), labelled 0, 1, 2 in that order. ``--root DIR`` reads the three folders from
``DIR`` instead. The pool has no splits of its own: a fixed 20% of each class is ``test`` (400), the rest
``trainval`` (1,600), of which a fixed 10% is held out as ``val``.
"""

from __future__ import annotations

from pathlib import Path

from ...packaged import package_file
from ..datasets import DataError, ImageListDataset, Sample, take
from .base import DatasetInfo, Source, fixed_test_indices, need_dir, register_source, with_held_out
from .folder import IMAGE_SUFFIXES

TEXTILE_PIP = "conformal-clip-data==0.1.4"
TEXTILE_CLASSES = ("nominal", "local", "global")
#: sizes of the splits of the images the package ships
TEXTILE_SIZES = {"train": 1440, "val": 160, "trainval": 1600, "test": 400}


class TextileSource(Source):
    held_out = True

    def __init__(self, spec: str, root: Path | None):
        self.root = need_dir(root, f"textile image folder for {spec}") if root is not None else None
        self._data = None
        self.info = DatasetInfo(
            spec,
            "textile",
            "textile",
            len(TEXTILE_CLASSES),
            TEXTILE_CLASSES,
            with_held_out(("train", "test")),
            root,
            TEXTILE_SIZES if root is None else {},
        )

    def _samples(self) -> tuple[Path, list[Sample]]:
        base = self.root or package_file("conformal_clip_data", "data/textile_images/simulated", TEXTILE_PIP)
        samples = []
        for label, name in enumerate(TEXTILE_CLASSES):
            folder = need_dir(base / name, f"class folder {name!r} of the textile images")
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not files:
                raise DataError(f"{folder}: no images")
            samples += [Sample(f, label, str(folder)) for f in files]
        return base, samples

    def _dataset(self, split, transform):
        if self._data is None:
            base, samples = self._samples()
            self._data = base, samples, fixed_test_indices([s[1] for s in samples])
        base, samples, (train, test) = self._data
        full = ImageListDataset(samples, len(TEXTILE_CLASSES), str(base), transform)
        return take(full, train if split == "train" else test)


@register_source("textile", "textile-defects", usage="textile")
def _textile(spec: str, arg: str, root: Path | None) -> Source:
    return TextileSource(spec, root)
