"""``folder:<path>``: a folder of images with one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

from ..datasets import DataError, ImageListDataset, Sample
from .base import DatasetInfo, Source, need_dir, register_source, with_held_out

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class FolderSource(Source):
    """``folder:<path>``: one sub-folder per class (sorted names → labels 0..N-1).

    Splits, first match wins: (1) split lists ``<path>/<split>.txt`` with one image path per line, relative
    to ``<path>`` and starting with the class folder (``cat/001.jpg``); (2) split folders
    ``<path>/<split>/<class>/...`` for ``train``/``val``/``test``; (3) otherwise one split ``all``.
    """

    def __init__(self, spec: str, path: str, root: Path | None):
        p = Path(path).expanduser()
        if not p.is_absolute() and root is not None:
            p = Path(root) / p
        self.dir = need_dir(p, f"image folder for {spec}")
        self.lists = {
            s: self.dir / f"{s}.txt" for s in ("train", "val", "test") if (self.dir / f"{s}.txt").is_file()
        }
        split_dirs = [s for s in ("train", "val", "test") if (self.dir / s).is_dir()]
        if self.lists:
            splits, class_root = tuple(self.lists), self.dir
        elif "train" in split_dirs:
            splits, class_root = tuple(split_dirs), self.dir / "train"
        else:
            splits, class_root = ("all",), self.dir
        self.layout = "lists" if self.lists else "dirs" if splits != ("all",) else "single"
        self.held_out = "train" in splits and "val" not in splits
        splits = with_held_out(splits)
        classes = sorted(d.name for d in class_root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"{class_root}: no class sub-folders found")
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.info = DatasetInfo(spec, "folder", self.dir.name, len(classes), tuple(classes), splits, self.dir)

    def _scan(self, base: Path) -> list[Sample]:
        samples = []
        for cls in sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if cls not in self.class_index:
                raise DataError(f"{base / cls}: class folder not present in the training split")
            for f in sorted((base / cls).rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    samples.append(Sample(f, self.class_index[cls], str(base / cls)))
        return samples

    def _dataset(self, split, transform):
        if self.layout == "lists":
            list_file = self.lists[split]
            samples = []
            for number, line in enumerate(list_file.read_text().splitlines(), 1):
                rel = line.strip()
                if not rel:
                    continue
                cls = Path(rel).parts[0]
                if cls not in self.class_index:
                    raise DataError(f"{list_file}:{number}: {rel!r} is not inside a class folder")
                samples.append(Sample(self.dir / rel, self.class_index[cls], f"{list_file}:{number}"))
            source = str(list_file)
        else:
            base = self.dir if self.layout == "single" else self.dir / split
            samples, source = self._scan(base), str(base)
        return ImageListDataset(samples, self.info.num_classes, source, transform)


@register_source("folder", usage="folder:<path>")
def _folder(spec: str, arg: str, root: Path | None) -> Source:
    return FolderSource(spec, arg, root)
