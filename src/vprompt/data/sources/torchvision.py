"""``torchvision:<Class>``: a ``torchvision.datasets`` class read with ``download=False``."""

from __future__ import annotations

import inspect
from pathlib import Path

from ..datasets import TransformedDataset
from .base import DatasetInfo, Source, generic_names, need_dir, register_source, with_held_out

#: classes whose ``split=`` takes only these values (the rest of the split= classes take train/val/test)
_SPLIT_VALUES = {name: ("train", "test") for name in ("SVHN", "GTSRB", "Food101", "StanfordCars", "STL10")}


class TorchvisionSource(Source):
    """A ``torchvision.datasets`` class, always constructed with ``download=False``."""

    def __init__(self, spec: str, cls_name: str, root: Path | None, num_classes: int | None = None):
        import torchvision.datasets as tvd

        self.cls = getattr(tvd, cls_name, None)
        if self.cls is None or not isinstance(self.cls, type):
            raise ValueError(f"{spec}: torchvision.datasets has no dataset class {cls_name!r}")
        if root is None:
            raise ValueError(
                f"{spec} needs a data root (the root= folder torchvision.datasets.{cls_name} reads)"
            )
        self.root = need_dir(Path(root), f"data root for {spec}")
        params = inspect.signature(self.cls).parameters
        self.mode = "train" if "train" in params else "split" if "split" in params else None
        if self.mode is None:
            raise ValueError(f"{spec}: {cls_name} takes neither train= nor split=; use folder:<path> instead")
        splits = (
            ("train", "test")
            if self.mode == "train"
            else _SPLIT_VALUES.get(cls_name, ("train", "val", "test"))
        )
        self.held_out = "val" not in splits
        splits = with_held_out(splits)
        self.spec, self._cache = spec, {}
        first = self._base("train")
        classes = getattr(first, "classes", None)
        if num_classes is None:
            if not classes:
                raise ValueError(f"{spec}: {cls_name} does not list its classes; cannot tell the class count")
            num_classes = len(classes)
        names = tuple(str(c) for c in classes) if classes and len(classes) == num_classes else None
        if cls_name == "SVHN":
            names = tuple(str(i) for i in range(10))
        self.info = DatasetInfo(
            spec,
            spec.split(":")[0],
            cls_name,
            num_classes,
            names or generic_names(num_classes),
            splits,
            self.root,
        )

    def _base(self, split: str):
        if split not in self._cache:
            kwargs = {"train": split == "train"} if self.mode == "train" else {"split": split}
            try:
                self._cache[split] = self.cls(str(self.root), download=False, **kwargs)
            except (RuntimeError, FileNotFoundError, OSError) as e:
                raise FileNotFoundError(
                    f"{self.root}: torchvision {self.cls.__name__} ({split}) not found there: {e}"
                ) from e
        return self._cache[split]

    def _dataset(self, split, transform):
        return TransformedDataset(
            self._base(split), self.info.num_classes, f"{self.spec} [{split}]", transform
        )


@register_source("torchvision", usage="torchvision:<Class>")
def _torchvision(spec: str, arg: str, root: Path | None) -> Source:
    return TorchvisionSource(spec, arg, root)
