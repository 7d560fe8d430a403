"""The data of one run: which splits it trains, validates and tests on, and the loaders that feed them.

Splits come from the protocol (``vtab``: tune train800 → val200, final train800val200 → test) unless
overridden. The test split is only ever evaluated once, at the end of a final run; validation never
overlaps the training split (``best-val`` selection on a split the model trained on is refused).

Order and augmentation are reproducible and independent of the number of processes and workers: the
order of epoch ``e`` is a permutation drawn from ``(seed, e)``, and each training item's random
transform is seeded from ``(seed, e, index)``. A resumed run therefore sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import data as vdata
from ..data.datasets import ImageListDataset
from .config import DataOptions
from .distributed import Context, split_evenly

#: what each logical split contains (for the overlap check)
_PARTS = {"trainval": {"train", "val"}}


@dataclass(frozen=True)
class Splits:
    train: str
    val: str | None
    test: str | None


def resolve_splits(
    config: DataOptions, protocol: str, own_train: str = "train", choosers: tuple[str, ...] = ()
) -> Splits:
    """The run's splits: the protocol's tuning pair (train → val) or final pair (trainval → test; with
    ``final_train`` train: ``own_train``, the dataset's own training split, → test). ``choosers``: the
    options that choose on the validation split (see :func:`~.config.val_choosers`)."""
    proto = vdata.get_protocol(protocol)
    train, evaluation = proto.splits(final=config.final)
    if config.final and config.final_train == "train":
        train = own_train
    val, test = (None, evaluation) if config.final else (evaluation, None)

    def override(value: str | None, default: str | None) -> str | None:
        if value is None:
            return default
        return None if value.lower() == "none" else value

    train = vdata.canonical_split(override(config.train_split, train))
    val, test = (
        vdata.canonical_split(override(s, d)) for s, d in ((config.val_split, val), (config.test_split, test))
    )
    choosers = " and ".join(choosers)
    if choosers and val is None:
        raise ValueError(
            f"{choosers} needs a validation split, but this run has none "
            f"({'a final run trains on ' + train if config.final else 'val_split is none'}); use "
            "--selection final without --early-stop, or name one with --val-split (and --train-split so "
            "they do not overlap)"
        )
    if choosers and val == proto.splits(final=True)[1]:
        raise ValueError(
            f"{choosers} would choose on the test split {val!r}; validate on a split the "
            "run neither trains on nor reports (the protocol's val split)"
        )
    roles = [("training", train), ("validation", val), ("test", test)]
    for i, (role_a, a) in enumerate(roles):
        for role_b, b in roles[i + 1 :]:
            if a is not None and b is not None and _PARTS.get(a, {a}) & _PARTS.get(b, {b}):
                raise ValueError(
                    f"the {role_a} split {a!r} and the {role_b} split {b!r} share images; "
                    f"{role_b} data must be data the model never trains or selects on"
                )
    return Splits(train, val, test)


class SeededItems(Dataset):
    """Items addressed as ``(epoch, index)``; random transforms are seeded from ``(seed, epoch, index)``."""

    def __init__(self, base: Dataset, seed: int, augments: bool):
        self.base, self.seed, self.augments = base, seed, augments

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if not self.augments:
            return self.base[index]
        with seeded(hash((self.seed, epoch, index))):
            return self.base[index]


@contextlib.contextmanager
def seeded(seed: int):
    """The host's torch, ``random`` and NumPy RNGs seeded from ``seed`` inside, restored after (timm's
    transforms and Mixup draw from ``random`` and NumPy, torchvision's from torch)."""
    seed &= 0x7FFF_FFFF_FFFF
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFF_FFFF)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


class EpochBatches:
    """A batch sampler: global batches of one epoch's order, each split into one part per process."""

    def __init__(self, size: int, batch_size: int, ctx: Context, seed: int, shuffle: bool):
        if batch_size < ctx.world:
            raise ValueError(f"batch size {batch_size} is smaller than the {ctx.world} processes")
        self.size, self.batch_size, self.ctx, self.seed, self.shuffle = size, batch_size, ctx, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        batches = [order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        # every process needs at least one item of every batch (else DDP would wait forever)
        return [b for b in batches if len(b) >= self.ctx.world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.global_batches():
            yield [(self.epoch, i) for i in split_evenly(batch, self.ctx.world, self.ctx.rank)]

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (rest >= self.ctx.world)


@dataclass(frozen=True)
class DataPlan:
    """What a run will read, decided and checked before anything heavy is built (``source``: data given
    as Python objects, else ``None``: the config's spec names it)."""

    info: vdata.DatasetInfo
    protocol: str
    splits: Splits
    randomness: str | None = None  # why the training items differ between epochs (None: they do not)
    source: vdata.Source | None = None

    @property
    def augments(self) -> bool:
        """Whether the training items may be random (no frozen-prefix cache then)."""
        return self.randomness is not None


def data_spec(config: DataOptions) -> str:
    """The run's dataset spec with ``--image-column`` / ``--label-column`` in it (``hf:`` data)."""
    return vdata.with_columns(config.data, config.image_column, config.label_column)


def plan_data(
    config: DataOptions, source: vdata.Source | None = None, choosers: tuple[str, ...] = ()
) -> DataPlan:
    """Resolve protocol and splits, then check the data cheaply: files, labels, a decoded sample.
    ``source``: the data given as Python objects (``config.data`` then only describes it); ``choosers``:
    as for :func:`resolve_splits`."""
    protocol = config.protocol or vdata.default_protocol(config.data)
    if vdata.get_protocol(protocol).train_augments and config.preprocess != "protocol":  # unknown: an error
        raise ValueError(
            f"preprocess {config.preprocess!r} replaces a plain resize; protocol {protocol!r} has its own crops"
        )
    own_train = "train"
    if config.final and config.final_train == "train" and config.train_split is None:
        own_train = vdata.own_train_split(
            source or data_spec(config), config.root, config.images_outside_root
        )
    splits = resolve_splits(config, protocol, own_train, choosers)
    wanted = [s for s in (splits.train, splits.val, splits.test) if s is not None]
    info = vdata.preflight(
        source or data_spec(config), config.root, wanted, allow_outside_root=config.images_outside_root
    )
    randomness = vdata.train_randomness(protocol, config.augment, config.random_erasing)
    if randomness is None and info.own_transforms:
        randomness = "the dataset's items are tensors from its own transforms, which may be random"
    return DataPlan(info, protocol, splits, randomness, source)


@dataclass
class RunData:
    """The datasets of a run, transformed for its backbone."""

    plan: DataPlan
    train: Dataset | None
    val: Dataset | None
    test: Dataset | None

    @property
    def augments(self) -> bool:
        return self.plan.augments

    def describe(self) -> dict:
        plan = self.plan
        sizes = {k: len(getattr(self, k)) for k in ("train", "val", "test") if getattr(self, k) is not None}
        return {
            "spec": plan.info.spec,
            **({"description": plan.info.name} if plan.source is not None else {}),
            "protocol": plan.protocol,
            "splits": {k: getattr(plan.splits, k) for k in ("train", "val", "test")},
            "sizes": sizes,
            "num_classes": plan.info.num_classes,
            "class_names": list(plan.info.class_names),
            "augmentation": plan.augments,
        }


def load_data(
    config: DataOptions, plan: DataPlan, data_config: dict, head_classes: int, seed: int
) -> RunData:
    """The run's splits with the protocol's transforms for the model's ``data_config`` (its input size,
    mean and std: the backbone's unless the method asks for another input); the training subset follows
    ``seed``."""
    vdata.check_num_classes(plan.info, head_classes)

    def load(split: str | None, train: bool, size: int | None):
        if split is None:
            return None
        ds = vdata.load(
            plan.source or data_spec(config),
            config.root,
            split,
            data_config,
            protocol=plan.protocol,
            train=train,
            preprocess=config.preprocess,
            allow_outside_root=config.images_outside_root,
            augment=config.augment,
            random_erasing=config.random_erasing,
        )
        # the training subset follows the run's seed; evaluation subsets are the same for every seed
        return vdata.subset(ds, size, seed=seed if train else 0) if size is not None else ds

    return RunData(
        plan,
        train=load(plan.splits.train, True, config.train_size),
        val=load(plan.splits.val, False, config.eval_size),
        test=load(plan.splits.test, False, config.eval_size),
    )


def private_generator(seed: int = 0) -> torch.Generator:
    """For DataLoaders: iterating one draws a base seed from its generator, which must not be the
    global RNG (dropout draws from that; a cached run does not iterate the same loaders)."""
    return torch.Generator().manual_seed(seed)


#: worker processes a GPU run starts by default (data decoding and resizing then keep up with the GPU)
GPU_WORKERS = 8


def default_workers(dataset: Dataset, requested: int | None, device: torch.device | None = None) -> int:
    """Worker processes: as asked; else, on a GPU, up to :data:`GPU_WORKERS` (every dataset decodes or
    transforms images per item, which the GPU would wait for); on a CPU, 0 for data held in memory and
    up to 4 for image files (workers there compete with the training threads)."""
    if requested is not None:
        return requested
    spare = (os.cpu_count() or 1) - 1
    if device is not None and device.type == "cuda":
        return max(0, min(GPU_WORKERS, spare))
    base = dataset
    while hasattr(base, "base") and not isinstance(base, ImageListDataset):
        base = base.base
    if not isinstance(base, ImageListDataset):
        return 0
    return max(0, min(4, spare))


def loader_options(dataset: Dataset, requested: int | None, device: torch.device) -> dict:
    """``num_workers`` and ``pin_memory`` for a DataLoader feeding ``device``: pinned host memory on a
    GPU, so that the batches' ``to(device, non_blocking=True)`` copies overlap with compute."""
    return {
        "num_workers": default_workers(dataset, requested, device),
        "pin_memory": device.type == "cuda",
    }


def train_loader(
    dataset: Dataset, batch_size: int, seed: int, workers: int | None, ctx: Context, augments: bool
) -> tuple[DataLoader, EpochBatches]:
    sampler = EpochBatches(len(dataset), batch_size, ctx, seed, shuffle=True)
    options = loader_options(dataset, workers, ctx.device)
    loader = DataLoader(
        SeededItems(dataset, seed, augments),
        batch_sampler=sampler,
        persistent_workers=options["num_workers"] > 0,
        generator=private_generator(seed),
        **options,
    )
    return loader, sampler


def eval_loader(dataset: Dataset, batch_size: int, ctx: Context, workers: int | None) -> DataLoader:
    """This process's contiguous share of ``dataset``, in order (results are summed over processes)."""
    indices = split_evenly(list(range(len(dataset))), ctx.world, ctx.rank)
    shard = torch.utils.data.Subset(dataset, indices)
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        generator=private_generator(),
        **loader_options(dataset, workers, ctx.device),
    )
