"""The data side of a run: splits per protocol, reproducible order and augmentation, process shards."""

from __future__ import annotations

import pytest
import torch

from vprompt.data import load
from vprompt.engine.config import DataOptions
from vprompt.engine.distributed import Context
from vprompt.engine.run_data import (
    EpochBatches,
    SeededItems,
    eval_loader,
    load_data,
    loader_options,
    plan_data,
    resolve_splits,
    train_loader,
)

CONFIG = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}


@pytest.mark.parametrize(
    "options, protocol, expected",
    [
        ({}, "vtab", ("train", "val", None)),
        ({"final": True}, "vtab", ("trainval", None, "test")),
        ({"final": True}, "fgvc", ("trainval", None, "test")),
        ({"final": True, "train_split": "train", "val_split": "val"}, "vp", ("train", "val", "test")),
        ({"val_split": "none"}, "vp", ("train", None, None)),
    ],
)
def test_splits_follow_the_protocol(options, protocol, expected):
    splits = resolve_splits(DataOptions(**options), protocol)
    assert (splits.train, splits.val, splits.test) == expected


def test_augmentation_is_seeded_per_item_not_by_the_global_rng():
    base = load("synthetic:2x24", None, "train", CONFIG, protocol="fgvc", train=True)  # random crop + flip
    items = SeededItems(base, seed=3, augments=True)
    torch.manual_seed(1)
    a = items[(0, 5)][0]
    torch.manual_seed(2)
    state = torch.get_rng_state()
    b = items[(0, 5)][0]
    assert torch.equal(a, b)  # whatever the global RNG state was
    assert torch.equal(torch.get_rng_state(), state)  # and the global RNG is left alone
    assert any(not torch.equal(a, items[(e, 5)][0]) for e in range(1, 6))  # other epochs, other crops
    assert not torch.equal(a, SeededItems(base, seed=4, augments=True)[(0, 5)][0])


def test_process_shards_tile_each_global_batch():
    size, batch = 53, 16
    single = EpochBatches(size, batch, Context(), seed=7, shuffle=True)
    single.set_epoch(2)
    shards = []
    for rank in range(3):
        sampler = EpochBatches(size, batch, Context(rank=rank, world=3), seed=7, shuffle=True)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    whole = list(single)
    assert len(whole) == len(single) == 4 and all(len(s) == len(whole) for s in shards)
    for step, batch_items in enumerate(whole):
        joined = [item for rank in range(3) for item in shards[rank][step]]
        assert joined == batch_items  # contiguous parts, in rank order
    assert sorted(i for b in whole for _, i in b) == list(range(size))
    other = EpochBatches(size, batch, Context(), seed=7, shuffle=True)
    other.set_epoch(3)
    assert list(other) != whole  # a new order every epoch


def test_a_last_batch_too_small_to_share_is_dropped_everywhere():
    # 33 = 2×16 + 1: one process can train on the lone item, two cannot share it
    assert len(list(EpochBatches(33, 16, Context(), 0, True))) == 3
    two = EpochBatches(33, 16, Context(rank=1, world=2), 0, True)
    assert len(two) == len(list(two)) == 2


def test_validation_never_overlaps_training_even_by_file_name():
    config = DataOptions(train_split="train800val200", val_split="val200")
    with pytest.raises(ValueError, match="training split 'trainval' and the validation split 'val' share"):
        resolve_splits(config, "vtab")


@pytest.mark.parametrize(
    "options",
    [
        {"train_split": "train", "val_split": "trainval"},  # val contains the training data
        {"train_split": "trainval", "val_split": "val"},  # training contains the validation data
        {"train_split": "train", "val_split": "train"},
        {"final": True, "test_split": "trainval"},  # testing on the final training split
        {"final": True, "train_split": "train", "test_split": "train"},
        {"val_split": "test", "train_split": "train", "test_split": "test"},  # selecting on the test split
        {"val_split": "val", "train_split": "train", "test_split": "trainval"},
    ],
)
def test_no_two_roles_share_a_split_either_way(options):
    with pytest.raises(ValueError, match="share images"):
        resolve_splits(DataOptions(**options), "vp")


def test_evaluation_subsets_do_not_depend_on_the_seed():
    def subsets(seed):
        config = DataOptions(
            data="synthetic:4x16", train_size=8, eval_size=6, final=True, val_split="val", train_split="train"
        )
        data = load_data(config, plan_data(config), CONFIG, head_classes=4, seed=seed)
        return data.train.indices, data.val.indices, data.test.indices

    (train0, val0, test0), (train1, val1, test1) = subsets(0), subsets(1)
    assert (val0, test0) == (val1, test1)  # every seed is judged on the same images
    assert train0 != train1  # while the training subset follows the seed


def test_loaders_use_workers_and_pinned_memory_by_default_on_a_gpu(monkeypatch, tmp_path):
    """On a GPU every loader decodes in worker processes into pinned memory; on a CPU in-memory data
    stays in the main process and image files get up to 4 workers. An explicit --workers wins."""
    from vprompt.data.datasets import ImageListDataset, Sample
    from vprompt.engine import run_data as engine_data

    monkeypatch.setattr(engine_data.os, "cpu_count", lambda: 16)
    synthetic = load("synthetic:2x16", None, "train", CONFIG, protocol="vp")
    files = ImageListDataset([Sample(tmp_path / "a.jpg", 0)], 1, "list.txt")
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert loader_options(synthetic, None, gpu) == {
        "num_workers": engine_data.GPU_WORKERS,
        "pin_memory": True,
    }
    assert loader_options(files, None, gpu)["num_workers"] == 8
    assert loader_options(synthetic, None, cpu) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(files, None, cpu)["num_workers"] == 4
    assert (
        loader_options(synthetic, 3, gpu)["num_workers"] == 3
        and loader_options(files, 0, cpu)["num_workers"] == 0
    )
    monkeypatch.setattr(engine_data.os, "cpu_count", lambda: 2)
    assert loader_options(synthetic, None, gpu)["num_workers"] == 1  # one core left for the main process
    # the run's loaders take these options (building them touches no GPU)
    ctx = Context(device=gpu)
    loader, _ = train_loader(synthetic, 4, 0, None, ctx, augments=False)
    assert loader.pin_memory and loader.num_workers == 1 and loader.persistent_workers
    evaluation = eval_loader(synthetic, 8, ctx, None)
    assert evaluation.pin_memory and evaluation.num_workers == 1
