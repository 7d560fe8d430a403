"""``folder:<path>``: a folder of images with one sub-folder per class."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..datasets import IMAGE_SUFFIXES, DataError, ImageListDataset, Sample
from ..entries import read_text
from .base import DatasetInfo, Source, need_dir, register_source, with_held_out


class FolderSource(Source):
    """``folder:<path>``: one sub-folder per class (sorted names → labels 0..N-1), at least two classes.

    Splits, first match wins: (1) split lists ``<path>/<split>.txt`` with one image path per line, relative
    to ``<path>`` and starting with the class folder (``cat/001.jpg``); (2) split folders
    ``<path>/<split>/<class>/...`` for ``train``/``val``/``test`` (without ``val``, a seeded 10% of
    ``train`` is held out as val, never a class's last image: a class with a single image keeps it for
    training, and val is refused when every class has only one; see :func:`.base.held_out_indices`);
    (3) otherwise (torchvision's
    ``ImageFolder`` layout) one pool, ``all``, from which seeded, class-stratified ``val`` and ``test``
    are held out: :data:`HOLD_OUT` by default, or ``folder:<path>?val=0.1&test=0.2&seed=0``. Each class
    gives ``round(n·fraction)`` images (at least one) to val and to test and keeps at least one for
    ``train`` (a class too small for that is refused); ``train`` is the rest and ``trainval`` train + val.

    Folders are walked following symlinks (images or class folders may live on another disk); a broken
    symlink, a symlink loop, a folder reached twice and an empty class folder each raise :class:`DataError`
    naming it. Names starting with ``.`` are ignored; files that are not images are ignored.
    """

    def __init__(self, spec: str, path: str, root: Path | None, hold_out: dict[str, float] | None = None):
        self.hold_out = {**HOLD_OUT, **(hold_out or {})}
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
        if self.layout == "single":  # a split with a zero fraction is not offered
            splits = ("train",) + ("val", "trainval") * (self.hold_out["val"] > 0)
            splits += ("test",) * (self.hold_out["test"] > 0) + ("all",)
        else:
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
        elif self.layout == "single":
            samples, source = self._scan(self.dir), str(self.dir)
            if split != "all":
                chosen = self.pool_split(samples)[split]
                samples, source = [samples[i] for i in chosen], f"{self.dir} ({split} of the pool)"
        else:
            base = self.dir / split
            samples, source = self._scan(base), str(base)
        return ImageListDataset(samples, self.info.num_classes, source, transform)

    def pool_split(self, samples: list[Sample]) -> dict[str, list[int]]:
        """Indices (into ``samples``) of train / val / trainval / test: per class, a seeded shuffle gives
        its first ``round(n·test)`` images to test, the next ``round(n·val)`` to val (each at least one)."""
        val, test, seed = self.hold_out["val"], self.hold_out["test"], int(self.hold_out["seed"])
        rng = np.random.default_rng(seed)
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        labels = np.array([s.label for s in samples])
        for label, name in enumerate(self.info.class_names):
            members = np.flatnonzero(labels == label)
            n_test = max(1, round(len(members) * test)) if test > 0 else 0
            n_val = max(1, round(len(members) * val)) if val > 0 else 0
            if len(members) < n_test + n_val + 1:
                raise DataError(
                    f"{self.dir / name}: {len(members)} images cannot give {n_val} to val, {n_test} to test "
                    "and keep one for train; add images or lower ?val= / ?test="
                )
            order = rng.permutation(members).tolist()
            parts["test"] += order[:n_test]
            parts["val"] += order[n_test : n_test + n_val]
            parts["train"] += order[n_test + n_val :]
        parts = {k: sorted(v) for k, v in parts.items()}
        parts["trainval"] = sorted(parts["train"] + parts["val"])
        return parts


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


#: what a single-pool folder holds out of every class by default (see :class:`FolderSource`)
HOLD_OUT = {"val": 0.1, "test": 0.2, "seed": 0}


def parse_hold_out(arg: str) -> tuple[str, dict[str, float]]:
    """``"<path>?val=0.15&test=0.25&seed=1"`` → ``("<path>", {...})``; a path without ``?`` has none."""
    path, sep, query = arg.rpartition("?")
    if not sep or "=" not in query:
        return arg, {}
    options: dict[str, float] = {}
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key not in HOLD_OUT:
            raise ValueError(f"folder option {key!r} is unknown; the options are: {', '.join(HOLD_OUT)}")
        try:
            options[key] = float(value) if key != "seed" else int(value)
        except ValueError:
            raise ValueError(f"folder option {key}={value!r}: expected a number") from None
    fractions = {k: v for k, v in {**HOLD_OUT, **options}.items() if k != "seed"}
    if any(not 0 <= v < 1 for v in fractions.values()) or sum(fractions.values()) >= 1:
        raise ValueError(f"folder hold-out fractions must be in [0, 1) and sum below 1, got {fractions}")
    return path, options


def _portable(arg: str) -> str:
    """A path relative to the working directory made absolute (the hold-out options kept)."""
    path, _ = parse_hold_out(arg)
    if Path(path).expanduser().is_absolute():
        return arg
    return f"{Path(path).expanduser().resolve()}{arg[len(path) :]}"


@register_source("folder", usage="folder:<path>[?val=0.1&test=0.2&seed=0]", portable=_portable)
def _folder(spec: str, arg: str, root: Path | None) -> Source:
    path, hold_out = parse_hold_out(arg)
    return FolderSource(spec, path, root, hold_out)
