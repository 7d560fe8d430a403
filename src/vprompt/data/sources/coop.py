"""CoOp (Zhou et al.) ``split_zhou_*.json`` layouts, used by the VP set's ``vp:<name>`` datasets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..datasets import DataError, ImageListDataset, Sample
from ..entries import json_label, json_path, read_json
from .base import DatasetInfo, Source, need_dir


@dataclass(frozen=True)
class _CoOp:
    folder: str  # <root>/<folder>/ holds the split file
    images: str  # relpaths in the split file are relative to <root>/<folder>/<images>/
    split_file: str
    num_classes: int


#: CoOp (Zhou et al.) layouts for the VP datasets that use ``split_zhou_*.json``.
COOP: dict[str, _CoOp] = {
    "flowers102": _CoOp("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", 102),
    "dtd": _CoOp("dtd", "images", "split_zhou_DescribableTextures.json", 47),
    "ucf101": _CoOp("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", 101),
    "food101": _CoOp("food-101", "images", "split_zhou_Food101.json", 101),
    "eurosat": _CoOp("eurosat", "2750", "split_zhou_EuroSAT.json", 10),
    "oxford_pets": _CoOp("oxford_pets", "images", "split_zhou_OxfordPets.json", 37),
    "stanford_cars": _CoOp("stanford_cars", "", "split_zhou_StanfordCars.json", 196),
    "sun397": _CoOp("sun397", "SUN397", "split_zhou_SUN397.json", 397),
}


class CoOpSource(Source):
    """CoOp ``split_zhou_*.json``: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``."""

    def __init__(self, spec: str, name: str, root: Path | None):
        meta = COOP[name]
        if root is None:
            raise ValueError(f"{spec} needs a data root (the folder that holds {meta.folder}/)")
        root = Path(root)
        self.dir = root if (root / meta.split_file).is_file() else root / meta.folder
        split_path = self.dir / meta.split_file
        need_dir(self.dir, f"dataset folder for {spec} (expected {root / meta.folder})")
        if not split_path.is_file():
            raise FileNotFoundError(f"{split_path}: split file is missing")
        self.split_path = split_path
        self.image_dir = self.dir / meta.images if meta.images else self.dir
        self.items = self._read(split_path)
        names = [f"class_{i}" for i in range(meta.num_classes)]
        for items in self.items.values():
            for _, label, cname in items:
                if 0 <= label < meta.num_classes:
                    names[label] = cname
        self.info = DatasetInfo(
            spec, "vp", name, meta.num_classes, tuple(names), ("train", "val", "trainval", "test"), root
        )

    @staticmethod
    def _read(split_path: Path) -> dict[str, list[tuple[str, int, str]]]:
        """``{split: [(relpath, label, classname), ...]}``; a bad entry is named by ``[split][index]``."""
        data = read_json(split_path)
        layout = "expected {'train'|'val'|'test': [[relpath, label, classname], ...]}"
        if not isinstance(data, dict):
            raise DataError(f"{split_path}: {layout}")
        items = {}
        for split in ("train", "val", "test"):
            rows = data.get(split)
            if not isinstance(rows, list):
                raise DataError(f"{split_path}: {layout} (no list under {split!r})")
            items[split] = []
            for i, row in enumerate(rows):
                where = f"{split_path} [{split}][{i}]"
                if not isinstance(row, list) or len(row) != 3:
                    raise DataError(f"{where}: expected [relpath, label, classname], got {json.dumps(row)}")
                rel, label, cname = json_path(row[0], where), json_label(row[1], where), row[2]
                if not isinstance(cname, str):
                    raise DataError(f"{where}: class name {json.dumps(cname)} is not a string")
                items[split].append((rel, label, cname))
        return items

    def _dataset(self, split, transform):
        parts = ("train", "val") if split == "trainval" else (split,)
        samples = [
            Sample(self.image_dir / rel, label, f"{self.split_path} [{p}][{i}]")
            for p in parts
            for i, (rel, label, _) in enumerate(self.items[p])
        ]
        return ImageListDataset(samples, self.info.num_classes, str(self.split_path), transform)
