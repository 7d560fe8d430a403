"""Datasets, splits and transforms.

A dataset is named by a spec string (``vtab1k:<task>``, ``fgvc:<name>``, ``vp:<name>``,
``torchvision:<Class>``, ``folder:<path>``, ``fashion-mnist``, ``synthetic:<classes>x<size>``) and read from
``root``. The public surface::

    info = describe("vtab1k:eurosat", root)            # DatasetInfo: num_classes, class_names, splits ...
    ds = load("vtab1k:eurosat", root, "train", data_config)   # torch Dataset of (image tensor, label)
    train_split, eval_split = get_protocol("vtab").splits(final=False)   # ("train", "val")
    preflight("vtab1k:eurosat", root, ["train", "val"], head_classes=10)  # cheap check before training
    check_num_classes(info, head_classes)

``data_config`` is the backbone's timm-style data config (``input_size``, ``mean``, ``std``,
``interpolation``); mean and std always come from it.
"""

from __future__ import annotations

import os

from .checks import CheckReport, check_dataset, check_num_classes, preflight
from .datasets import DataError, MissingFileError, subset
from .packaged import foolbox_imagenet
from .sources import DatasetInfo, resolve
from .transforms import (
    PROTOCOLS,
    Protocol,
    build_transform,
    default_protocol,
    get_protocol,
    is_train_deterministic,
    train_randomness,
)

_TRAIN_SPLITS = {"train", "trainval", "train800", "train800val200"}


def describe(
    spec: str, root: str | os.PathLike | None = None, *, allow_outside_root: bool = False
) -> DatasetInfo:
    """The :class:`DatasetInfo` of a spec (class count and names, splits); checks the root exists."""
    return resolve(spec, root, allow_outside_root=allow_outside_root).info


def load(
    spec: str,
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
        protocol = protocol or default_protocol(spec)
        transform = build_transform(data_config, protocol, train, preprocess, augment, random_erasing)
    return source.dataset(split, transform)


__all__ = [
    "CheckReport",
    "DataError",
    "DatasetInfo",
    "MissingFileError",
    "PROTOCOLS",
    "Protocol",
    "build_transform",
    "check_dataset",
    "check_num_classes",
    "default_protocol",
    "describe",
    "foolbox_imagenet",
    "get_protocol",
    "is_train_deterministic",
    "load",
    "preflight",
    "subset",
    "train_randomness",
]
