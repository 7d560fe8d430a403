"""Dataset specs (``family:argument`` strings) and where each family's files live on disk.

One file per family, each registering itself with ``@register_source`` (:func:`~.base.register_source`);
:func:`resolve` parses a spec and hands it to its family. Adding a source is adding one file here and
importing it below.

Split names are logical: ``train``, ``val``, ``trainval``, ``test`` (plus ``all`` for a class folder without
split lists). VTAB-1k also accepts its file names ``train800``, ``val200``, ``train800val200``.
See ``docs/guide.md`` (Data) for the exact folder layouts.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import (  # noqa: F401  (registers)
    fashion_mnist,
    fgvc,
    folder,
    hf,
    mnist5k,
    objects,
    synthetic,
    textile,
    torchvision,
    vp,
    vtab1k,
)
from .base import (
    SOURCES,
    USAGE,
    DatasetInfo,
    Source,
    canonical_split,
    held_out_indices,
    portable_spec,
    register_source,
    with_held_out,
)
from .coop import COOP
from .fashion_mnist import FASHION_MNIST_DEBIAN
from .fgvc import FGVC
from .hf import with_columns
from .objects import ObjectSource
from .vp import VP_TORCHVISION
from .vtab1k import VTAB_SPLIT_FILES, VTAB_TASKS


def resolve(
    spec: str | Source, root: str | os.PathLike | None = None, *, allow_outside_root: bool = False
) -> Source:
    """Parse a dataset spec and locate its files under ``root``; raises ValueError/FileNotFoundError.
    A :class:`Source` (data given as Python objects: :func:`from_objects`) is returned as it is.

    Images named by a split list must lie inside the dataset folder (``..`` resolved lexically, symlinks
    not followed); ``allow_outside_root=True`` accepts entries elsewhere (absolute paths, ``../``).
    """
    if isinstance(spec, Source):
        return spec
    family, _, arg = spec.strip().partition(":")
    factory = SOURCES.get(family.lower())
    if factory is None:
        raise ValueError(f"unknown dataset spec {spec!r}; use {', '.join(USAGE.values())}")
    source = factory(spec, arg, Path(root).expanduser() if root is not None else None)
    source.allow_outside_root = bool(allow_outside_root)
    return source


def from_objects(data) -> Source:
    """The source of data given as Python objects: a map-style dataset, ``(train, val)`` or a dict of
    splits (see :mod:`.objects`)."""
    return ObjectSource(data)


__all__ = [
    "COOP",
    "FASHION_MNIST_DEBIAN",
    "FGVC",
    "VP_TORCHVISION",
    "VTAB_SPLIT_FILES",
    "VTAB_TASKS",
    "DatasetInfo",
    "Source",
    "canonical_split",
    "from_objects",
    "held_out_indices",
    "portable_spec",
    "register_source",
    "resolve",
    "with_columns",
    "with_held_out",
]
