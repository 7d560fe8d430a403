"""``folder:<path>``: a folder of images with one sub-folder per class."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..datasets import DataError, ImageListDataset, Sample
from ..entries import read_text
from .base import DatasetInfo, Source, need_dir, register_source, with_held_out

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class FolderSource(Source):
    """``folder:<path>``: one sub-folder per class (sorted names → labels 0..N-1), at least two classes.

    Splits, first match wins: (1) split lists ``<path>/<split>.txt`` with one image path per line, relative
    to ``<path>`` and starting with the class folder (``cat/001.jpg``); (2) split folders
    ``<path>/<split>/<class>/...`` for ``train``/``val``/``test``; (3) otherwise one split ``all``.

    Folders are walked following symlinks (images or class folders may live on another disk); a broken
    symlink, a symlink loop, a folder reached twice and an empty class folder each raise :class:`DataError`
    naming it. Names starting with ``.`` are ignored; files that are not images are ignored.
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
        walk = FolderWalk(class_root)
        classes = walk.subfolders(class_root)
        if len(classes) < 2:
            found = f"only {classes[0].name!r}" if classes else "none"
            raise DataError(
                f"{class_root}: a folder dataset needs at least 2 class sub-folders, found {found}"
            )
        for folder in classes:
            if next(walk.images(folder), None) is None:
                raise DataError(f"{folder}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        names = [c.name for c in classes]
        self.class_index = {c: i for i, c in enumerate(names)}
        self.info = DatasetInfo(spec, "folder", self.dir.name, len(names), tuple(names), splits, self.dir)

    def _scan(self, base: Path) -> list[Sample]:
        samples = []
        walk = FolderWalk(base)
        for folder in walk.subfolders(base):
            if folder.name not in self.class_index:
                raise DataError(f"{folder}: class folder not present in the training split")
            before = len(samples)
            label = self.class_index[folder.name]
            samples += [Sample(f, label, str(folder)) for f in walk.images(folder)]
            if len(samples) == before:
                raise DataError(f"{folder}: class folder has no images")
        return samples

    def _dataset(self, split, transform):
        if self.layout == "lists":
            list_file = self.lists[split]
            samples = []
            for number, line in enumerate(read_text(list_file).splitlines(), 1):
                rel = line.strip()
                if not rel:
                    continue
                norm = Path(os.path.normpath(rel))
                if norm.is_absolute() or not norm.parts or norm.parts[0] not in self.class_index:
                    raise DataError(
                        f"{list_file}:{number}: {rel!r} is not inside a class folder of {self.dir} "
                        f"(expected <class>/<image>, classes: {', '.join(self.class_index)})"
                    )
                samples.append(
                    Sample(self.dir / norm, self.class_index[norm.parts[0]], f"{list_file}:{number}")
                )
            source = str(list_file)
        else:
            base = self.dir if self.layout == "single" else self.dir / split
            samples, source = self._scan(base), str(base)
        return ImageListDataset(samples, self.info.num_classes, source, transform)


class FolderWalk:
    """Walks the folders under ``top``, following symlinks, without ever looping.

    Every folder entered is remembered by ``(st_dev, st_ino)``: a link back to ``top``, to one of its
    parents or to a folder on the current path is a loop, a link to a folder already walked would count
    its images twice; both raise :class:`DataError` naming the link, as do broken links.
    """

    def __init__(self, top: Path):
        self.top = top
        self.seen: dict[tuple[int, int], Path] = {}
        # top and every folder above it: a link to any of them leads back into the dataset
        self.above = {self._key(Path(p)): Path(p) for p in (top.absolute(), *top.absolute().parents)}

    @staticmethod
    def _key(path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def _entries(self, folder: Path) -> list[tuple[Path, os.stat_result]]:
        """The visible entries of ``folder``, sorted by name, with the stat of what they point to."""
        try:
            names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
        except OSError as e:
            raise DataError(f"{folder}: cannot list folder ({e.strerror or e})") from e
        entries = []
        for name in names:
            path = folder / name
            try:
                entries.append((path, os.stat(path)))
            except FileNotFoundError:
                raise DataError(
                    f"{path}: broken symlink (its target {os.readlink(path)!r} does not exist)"
                ) from None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise DataError(f"{path}: symlink loop (the link resolves to itself)") from None
                raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
        return entries

    def _enter(self, path: Path, st: os.stat_result, ancestors: dict[tuple[int, int], Path]) -> None:
        key = (st.st_dev, st.st_ino)
        if key in ancestors or key in self.above:
            target = ancestors.get(key) or self.above[key]
            raise DataError(f"{path}: symlink loop (it leads back to {target}, which contains it)")
        if key in self.seen:
            raise DataError(
                f"{path}: leads to the same folder as {self.seen[key]}; its images would be counted twice"
            )
        self.seen[key] = path

    def subfolders(self, folder: Path) -> list[Path]:
        """The visible sub-folders of ``folder`` (through symlinks), sorted by name."""
        return [path for path, st in self._entries(folder) if stat.S_ISDIR(st.st_mode)]

    def images(self, folder: Path, ancestors: dict[tuple[int, int], Path] | None = None) -> Iterator[Path]:
        """Image files under ``folder``, depth first in name order, following symlinks."""
        if ancestors is None:
            st = os.stat(folder)
            self._enter(folder, st, {})
            ancestors = {(st.st_dev, st.st_ino): folder}
        for path, st in self._entries(folder):
            if stat.S_ISDIR(st.st_mode):
                self._enter(path, st, ancestors)
                yield from self.images(path, {**ancestors, (st.st_dev, st.st_ino): path})
            elif stat.S_ISREG(st.st_mode) and path.suffix.lower() in IMAGE_SUFFIXES:
                yield path


@register_source("folder", usage="folder:<path>")
def _folder(spec: str, arg: str, root: Path | None) -> Source:
    return FolderSource(spec, arg, root)
