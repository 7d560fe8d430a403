"""Datasets, splits and transforms.

A dataset is named by a spec string (``vtab1k:<task>``, ``folder:<path>``, ...) and read from ``root``:
:func:`describe`, :func:`load`, :func:`get_protocol`, :func:`preflight`, :func:`check_num_classes`.
Design notes: ``docs/design.md``, section ``vprompt/data/__init__.py``.
"""

from __future__ import annotations

import os

from .checks import CheckReport, check_dataset, check_num_classes, preflight
from .datasets import DataError, MissingFileError, subset
from .packaged import foolbox_imagenet
from .sources import (
    DatasetInfo,
    Source,
    canonical_split,
    from_objects,
    portable_spec,
    resolve,
    with_columns,
)
from .transforms import (
    PROTOCOLS,
    Protocol,
    build_transform,
    default_protocol,
    get_protocol,
    input_overrides,
    is_train_deterministic,
    train_randomness,
)

_TRAIN_SPLITS = {"train", "trainval", "train800", "train800val200"}


def describe(
    spec: str | Source, root: str | os.PathLike | None = None, *, allow_outside_root: bool = False
) -> DatasetInfo:
    """The :class:`DatasetInfo` of a spec (class count and names, splits); checks the root exists."""
    return resolve(spec, root, allow_outside_root=allow_outside_root).info


def load(
    spec: str | Source,
    root: str | os.PathLike | None,
    split: str,
    data_config: dict | None,
    protocol: str | None = None,
    train: bool | None = None,
    preprocess: str = "protocol",
    *,
    allow_outside_root: bool = False,
    augment: str = "protocol",
    random_erasing: float = 0.0,
):
    """A ``torch.utils.data.Dataset`` of ``(image, label)`` for one split of ``spec``.

    ``spec``: a spec string, or a :class:`Source` (data given as Python objects: :func:`from_objects`).
    ``split``: ``train``, ``val``, ``trainval`` or ``test`` (see ``describe(spec).splits``).
    ``protocol``: ``vtab``, ``fgvc`` or ``vp``; default from the spec's family (``default_protocol``).
    ``train``: use the protocol's training transform; default True for ``train``/``trainval``.
    ``data_config``: the model's data config; ``None`` gives untransformed RGB PIL images (inspection).
    ``preprocess``: ``protocol`` or ``resize-crop`` (see :func:`build_transform`).
    ``augment``, ``random_erasing``: the training transform's augmentation (see :func:`build_transform`).
    Labels are checked when the split is loaded; an undecodable image raises :class:`DataError` naming the
    file when its item is read (also from a DataLoader worker: the message arrives exact).
    ``allow_outside_root``: accept split-list entries that lie outside the dataset folder (refused by
    default, naming the list file and entry).
    """
    source = resolve(spec, root, allow_outside_root=allow_outside_root)
    transform = None
    if data_config is not None:
        if train is None:
            train = split in _TRAIN_SPLITS
        protocol = protocol or default_protocol(source.info.spec)
        transform = build_transform(data_config, protocol, train, preprocess, augment, random_erasing)
        source.input_size = tuple(data_config["input_size"])
    return source.dataset(split, transform)


def own_train_split(
    spec: str | Source, root: str | os.PathLike | None = None, allow_outside_root: bool = False
) -> str:
    """The split that is the dataset's own training set without its validation images: ``train``, or
    ``trainval`` where the data ships no val (vprompt holds val out of its training set)."""
    try:
        source = resolve(spec, root, allow_outside_root=allow_outside_root)
    except (ValueError, OSError):  # the data check that follows names what is wrong
        return "train"
    return "trainval" if source.held_out else "train"


__all__ = [
    "CheckReport",
    "DataError",
    "DatasetInfo",
    "MissingFileError",
    "PROTOCOLS",
    "Protocol",
    "Source",
    "build_transform",
    "canonical_split",
    "check_dataset",
    "check_num_classes",
    "default_protocol",
    "describe",
    "foolbox_imagenet",
    "from_objects",
    "get_protocol",
    "input_overrides",
    "is_train_deterministic",
    "load",
    "own_train_split",
    "portable_spec",
    "preflight",
    "subset",
    "train_randomness",
    "with_columns",
]
