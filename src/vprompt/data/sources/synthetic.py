"""``synthetic:<classes>x<size>``: deterministic generated images, for quick checks."""

from __future__ import annotations

from pathlib import Path

from ..datasets import SyntheticDataset
from .base import DatasetInfo, Source, generic_names, register_source

#: Items per class in each split of ``synthetic:<classes>x<size>``.
SYNTHETIC_PER_CLASS = {"train": 16, "val": 4, "test": 8}


class SyntheticSource(Source):
    """``synthetic:<classes>x<size>``: deterministic images, 16/4/8 per class in train/val/test."""

    def __init__(self, spec: str, arg: str):
        try:
            classes, size = (int(v) for v in arg.lower().split("x"))
        except ValueError:
            raise ValueError(f"{spec}: expected synthetic:<classes>x<size>, e.g. synthetic:4x32") from None
        if classes < 2 or size < 4:
            raise ValueError(f"{spec}: need at least 2 classes and 4 px")
        self.size = size
        self.info = DatasetInfo(
            spec,
            "synthetic",
            f"synthetic-{classes}x{size}",
            classes,
            generic_names(classes),
            ("train", "val", "trainval", "test"),
            image_size=size,
        )

    def _dataset(self, split, transform):
        n = self.info.num_classes
        per_class = SYNTHETIC_PER_CLASS
        if split == "trainval":
            # train and val are different seeds; trainval is a distinct seed with their combined size
            length, seed = n * (per_class["train"] + per_class["val"]), 3
        else:
            length, seed = n * per_class[split], {"train": 0, "val": 1, "test": 2}[split]
        return SyntheticDataset(n, self.size, length, seed, transform)


@register_source("synthetic", usage="synthetic:<classes>x<size>")
def _synthetic(spec: str, arg: str, root: Path | None) -> Source:
    return SyntheticSource(spec, arg)
