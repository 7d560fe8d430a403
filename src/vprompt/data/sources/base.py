"""What every data source shares: :class:`DatasetInfo`, the :class:`Source` interface, the held-out
validation split of train/test-only data, and the registry that maps a spec's family to its source."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...registry import Registry
from ..datasets import DataError, ImageListDataset, take
from ..entries import check_inside

#: Datasets that ship only train and test get a validation split: this fraction of the training set,
#: drawn once with a fixed seed, never a class's last image; ``train`` is the rest and ``trainval`` the
#: whole training set (see :func:`held_out_indices`).
HELD_OUT_FRACTION = 0.1
HELD_OUT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its spec, class count and names, splits, root, and the split sizes it must have.

    ``class_names`` are ``class_<i>`` where the names are not known (most VTAB tasks).
    ``expected_sizes`` maps split → required item count (VTAB-1k: 800/200/1000); empty when free.
    ``image_size``: the side of the images when the dataset's images are small and of one size (CIFAR,
    SVHN, GTSRB as the VP papers use it, Fashion-MNIST, synthetic), else ``None``.
    ``own_transforms``: the items are already tensors, made by the dataset's own transforms (which may be
    random: the frozen-prefix cache is then not used).
    """

    spec: str
    family: str
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    root: Path | None = None
    expected_sizes: dict[str, int] = field(default_factory=dict)
    image_size: int | None = None
    own_transforms: bool = False


def generic_names(n: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(n))


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def held_out_indices(n: int, labels: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """``(train, val)`` indices of a training set of ``n`` items: a fixed random 10% is held out for val.

    Given the items' ``labels``, val never takes a class's last image: the seeded draw passes over an item
    whose class has no other one left for train, so a class with a single image keeps it for training (and
    val holds fewer items, none if every class has one image).
    """
    order = np.random.default_rng(HELD_OUT_SEED).permutation(n).tolist()
    n_val = max(1, round(n * HELD_OUT_FRACTION)) if n > 1 else 0
    if labels is None:
        val = order[:n_val]
    else:
        left = Counter(labels)  # the images each class still has for train
        val = []
        for i in order:
            if len(val) == n_val:
                break
            if left[labels[i]] > 1:
                left[labels[i]] -= 1
                val.append(i)
    chosen = set(val)
    return [i for i in range(n) if i not in chosen], sorted(val)


#: Data that ships as one pool of images gets a test split: this fraction of every class, drawn once
#: with a fixed seed (the same on every machine); the rest is the training set (with a held-out ``val``).
TEST_FRACTION = 0.2
TEST_SEED = 0


def fixed_test_indices(labels: np.ndarray) -> tuple[list[int], list[int]]:
    """``(train, test)`` indices of a single pool: a fixed random :data:`TEST_FRACTION` of each class is test."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(TEST_SEED)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test += rng.permutation(members)[: round(len(members) * TEST_FRACTION)].tolist()
    chosen = set(test)
    return [i for i in range(len(labels)) if i not in chosen], sorted(test)


def with_held_out(splits: tuple[str, ...]) -> tuple[str, ...]:
    """Native splits plus a derived ``val`` / ``trainval`` where the data has ``train`` but no ``val``."""
    if "train" in splits and "val" not in splits:
        return ("train", "val", "trainval", *(s for s in splits if s != "train"))
    return splits


class Source:
    """A resolved spec: ``info`` plus ``dataset(split, transform)``; subclasses implement ``_dataset``.

    A source whose data has only train (and test) lists its splits through :func:`with_held_out` and sets
    ``held_out = True``: ``val`` is then a fixed 10% of the native training set (never a class's last image:
    a class with one image keeps it for train; refused when every class has one), ``train`` the rest and
    ``trainval`` all of it.
    """

    info: DatasetInfo
    held_out: bool = False
    #: The dataset folder: every image a list names must lie inside it (see :mod:`..entries`).
    dir: Path | None = None
    #: Accept list entries outside ``dir`` (set by :func:`~vprompt.data.resolve`).
    allow_outside_root: bool = False
    #: The model's input ``(C, H, W)`` (set by :func:`~vprompt.data.load`): what items that are already
    #: tensors must be.
    input_size: tuple[int, ...] | None = None

    def dataset(self, split: str, transform: Callable | None = None):
        split = self.canonical_split(split)
        if self.held_out and split in ("train", "val", "trainval"):
            full = self._checked("train", transform)
            if split == "trainval":
                return full
            train, val = held_out_indices(len(full), getattr(full, "targets", None))
            if split == "val" and not val:
                raise DataError(
                    f"{full.source}: every class has a single training image, so none is held out for val "
                    "(each keeps its only image for training); add images, give a val split, or train --final"
                )
            return take(full, train if split == "train" else val)
        return self._checked(split, transform)

    def _checked(self, split: str, transform):
        """``_dataset``, with every listed image checked to lie inside the dataset folder."""
        ds = self._dataset(split, transform)
        if isinstance(ds, ImageListDataset) and not self.allow_outside_root and self.dir is not None:
            check_inside(ds.samples, self.dir)
        return ds

    def canonical_split(self, split: str) -> str:
        if split not in self.info.splits:
            raise ValueError(
                f"{self.info.spec} has no split {split!r} (splits: {', '.join(self.info.splits)})"
            )
        return split

    def _dataset(self, split: str, transform):  # pragma: no cover - abstract
        raise NotImplementedError


#: family name (and aliases) → factory ``(spec, argument, root) -> Source``; see :func:`register_source`.
SOURCES: Registry[Callable[[str, str, Path | None], Source]] = Registry("data source")
#: family → usage shown in the error for an unknown spec, e.g. ``vtab1k:<task>``.
USAGE: dict[str, str] = {}
#: family → ``portable(argument) -> argument`` that reads the same data from any working directory.
PORTABLE: dict[str, Callable[[str], str]] = {}
#: split names a family's files use → the logical split (VTAB-1k: ``train800val200`` → ``trainval``).
SPLIT_ALIASES: dict[str, str] = {}


def register_source(
    *names: str,
    usage: str,
    portable: Callable[[str], str] | None = None,
    split_aliases: dict[str, str] | None = None,
    order: float = 0,
):
    """Register a source factory under one or more family names (the part of a spec before ``:``).
    ``portable``: how a spec's argument read relative to the working directory becomes one that reads
    the same data from anywhere (runs record it); ``split_aliases``: the family's own split names;
    ``order``: its place in :data:`SOURCES` (lower first, then as registered)."""

    def wrap(factory):
        for name in names:
            SOURCES.add(name, factory, order)
            if portable is not None:
                PORTABLE[name] = portable
        USAGE[names[0]] = usage
        SPLIT_ALIASES.update(split_aliases or {})
        return factory

    return wrap


def portable_spec(spec: str) -> str:
    """``spec`` with a relative path made absolute where its family reads one (see ``portable``)."""
    family, _, arg = spec.partition(":")
    convert = PORTABLE.get(family.lower())
    return f"{family}:{convert(arg)}" if convert is not None and arg else spec


def canonical_split(split: str | None) -> str | None:
    """The logical name of a split (a family's own file names, e.g. ``train800``, map to theirs)."""
    return SPLIT_ALIASES.get(split, split) if split is not None else None
