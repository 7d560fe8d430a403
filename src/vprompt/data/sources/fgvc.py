"""``fgvc:<name>``: VPT's FGVC layout (``train.json`` / ``val.json`` / ``test.json``, ``{image path: label}``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..datasets import DataError, ImageListDataset, Sample
from ..entries import json_label, json_path, read_json
from .base import DatasetInfo, Source, generic_names, need_dir, register_source


@dataclass(frozen=True)
class _FGVC:
    folder: str  # <root>/<folder>/ holds train.json, val.json, test.json
    images: str  # json image paths are relative to <root>/<folder>/<images>/
    num_classes: int
    title: str


#: VPT's FGVC layout: folder names and the image directory the json paths are relative to.
FGVC: dict[str, _FGVC] = {
    "cub": _FGVC("CUB_200_2011", "images", 200, "CUB-200-2011"),
    "nabirds": _FGVC("nabirds", "images", 555, "NABirds"),
    "flowers": _FGVC("OxfordFlower", "", 102, "Oxford Flowers 102"),
    "dogs": _FGVC("Stanford-dogs", "Images", 120, "Stanford Dogs"),
    "cars": _FGVC("Stanford-cars", "", 196, "Stanford Cars"),
}


class FGVCSource(Source):
    """VPT's json splits. Labels are mapped to ``0..N-1`` by rank among the distinct ids of all json files."""

    def __init__(self, spec: str, name: str, root: Path | None):
        if name not in FGVC:
            raise ValueError(f"unknown FGVC dataset {name!r}; choose one of {', '.join(FGVC)}")
        if root is None:
            raise ValueError(f"{spec} needs a data root (the folder that holds {FGVC[name].folder}/)")
        meta = FGVC[name]
        root = Path(root)
        # <root>/<folder>/train.json, or root already pointing at the dataset folder
        self.dir = root if (root / "train.json").is_file() else root / meta.folder
        need_dir(self.dir, f"{meta.title} folder for {spec} (expected {root / meta.folder})")
        self.image_dir = self.dir / meta.images if meta.images else self.dir
        self.annotations: dict[str, list[tuple[str, int]]] = {}
        for split in ("train", "val", "test"):
            path = self.dir / f"{split}.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: split file is missing")
            data = read_json(path)
            if not isinstance(data, dict):
                raise DataError(f"{path}: expected a json object {{image path: integer label}}")
            self.annotations[split] = [
                (json_path(k, f"{path} [{k!r}]"), json_label(v, f"{path} [{k!r}]")) for k, v in data.items()
            ]
        ids = sorted({label for items in self.annotations.values() for _, label in items})
        if len(ids) != meta.num_classes:
            raise DataError(
                f"{self.dir}: {len(ids)} distinct labels in train/val/test.json, "
                f"but {meta.title} has {meta.num_classes} classes"
            )
        self.label_map = {v: i for i, v in enumerate(ids)}
        names = ["" for _ in ids]
        for items in self.annotations.values():
            for rel, label in items:
                i = self.label_map[label]
                if not names[i]:
                    parent = Path(rel).parent.name
                    names[i] = parent or f"class_{i}"
        if len(set(names)) != len(names):  # images not in one folder per class (e.g. Flowers' jpg/)
            names = list(generic_names(meta.num_classes))
        self.info = DatasetInfo(
            spec, "fgvc", name, meta.num_classes, tuple(names), ("train", "val", "trainval", "test"), root
        )

    def _dataset(self, split, transform):
        parts = ("train", "val") if split == "trainval" else (split,)
        samples = [
            Sample(self.image_dir / rel, self.label_map[label], f"{self.dir / f'{p}.json'} [{rel!r}]")
            for p in parts
            for rel, label in self.annotations[p]
        ]
        return ImageListDataset(samples, self.info.num_classes, str(self.dir / f"{split}.json"), transform)


@register_source("fgvc", usage="fgvc:<name>")
def _fgvc(spec: str, arg: str, root: Path | None) -> Source:
    return FGVCSource(spec, arg.lower(), root)
