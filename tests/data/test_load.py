"""Loading each family through ``vprompt.data.load``, the code path users run."""

import numpy as np
import pytest
import torch

from fakes import CONFIG, VTAB_TINY, write_image
from vprompt.data import check_dataset, describe, get_protocol, load, preflight, subset


def test_vtab_splits_labels_and_transform(vtab_root):
    info = describe("vtab1k:eurosat", vtab_root)
    assert info.num_classes == 10 and info.class_names[1] == "Forest"
    assert info.splits == ("train", "val", "trainval", "test")
    for split, name in [
        ("train", "train800"),
        ("val", "val200"),
        ("trainval", "train800val200"),
        ("test", "test"),
    ]:
        ds = load("vtab1k:eurosat", vtab_root, split, CONFIG)
        assert len(ds) == VTAB_TINY[name]
        assert len(load("vtab1k:eurosat", vtab_root, name, CONFIG)) == VTAB_TINY[name]  # file names work too
    x, y = load("vtab1k:eurosat", vtab_root, "train", CONFIG)[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    # VTAB training transform is deterministic (no augmentation)
    ds = load("vtab1k:eurosat", vtab_root, "train", CONFIG)
    assert torch.equal(ds[0][0], ds[0][0])
    assert get_protocol("vtab").splits() == ("train", "val")
    assert get_protocol("vtab").splits(final=True) == ("trainval", "test")


def test_vtab_unknown_class_names_are_generic(tmp_path):
    (tmp_path / "dmlab").mkdir()
    info = describe("vtab1k:dmlab", tmp_path)
    assert info.num_classes == 6 and info.class_names[0] == "class_0"


def test_vtab_check_reports_size_mismatch_and_preflight_accepts_overrides(vtab_root):
    report = check_dataset("vtab1k:eurosat", vtab_root)
    assert not report.ok
    assert any("4 images, expected 800" in p for p in report.problems)
    assert any("2 images, expected 200" in p for p in report.problems)
    sizes = {"train": 4, "val": 2, "trainval": 6}
    assert check_dataset("vtab1k:eurosat", vtab_root, expected_sizes=sizes).ok
    info = preflight("vtab1k:eurosat", vtab_root, ["train", "val"], head_classes=10, expected_sizes=sizes)
    assert info.num_classes == 10


def test_fgvc_json_layout(fgvc_root):
    info = describe("fgvc:flowers", fgvc_root)
    assert info.num_classes == 102 and info.class_names[0] == "class_0"  # all in jpg/: no names
    train = load("fgvc:flowers", fgvc_root, "train", CONFIG)
    assert len(train) == 102
    labels = sorted(train.targets)
    assert labels[0] == 0 and labels[-1] == 101  # 1-based ids mapped to 0..101
    assert len(load("fgvc:flowers", fgvc_root, "trainval", CONFIG)) == 102 + 6
    # the root may also be the dataset folder itself
    assert describe("fgvc:flowers", fgvc_root / "OxfordFlower").num_classes == 102
    x, _ = load("fgvc:flowers", fgvc_root, "test", CONFIG)[0]
    assert x.shape == (3, 32, 32)
    assert check_dataset("fgvc:flowers", fgvc_root).ok


def test_fgvc_train_transform_random_eval_fixed(fgvc_root):
    cfg = dict(CONFIG, input_size=(3, 224, 224))
    assert get_protocol("fgvc").train_deterministic is False
    train = load("fgvc:flowers", fgvc_root, "train", cfg)
    steps = [type(t).__name__ for t in train.transform.transforms]
    assert steps == ["ToRGB", "Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transform.transforms[1].size == 256
    test = load("fgvc:flowers", fgvc_root, "test", dict(CONFIG, input_size=(3, 448, 448)))
    assert [type(t).__name__ for t in test.transform.transforms][2] == "CenterCrop"
    assert test.transform.transforms[1].size == 512  # resize scales with input size: 448*256/224


def test_coop_split_layout(coop_root):
    info = describe("vp:eurosat", coop_root)
    assert info.num_classes == 10
    assert info.class_names[:3] == ("AnnualCrop", "Forest", "HerbaceousVegetation")
    assert info.class_names[5] == "class_5"
    assert [len(load("vp:eurosat", coop_root, s, CONFIG)) for s in ("train", "val", "test")] == [6, 3, 3]
    x, y = load("vp:eurosat", coop_root, "val", CONFIG)[2]
    assert x.shape == (3, 32, 32) and y == 2
    assert check_dataset("vp:eurosat", coop_root).ok


def test_fashion_mnist_from_debian_package():
    info = describe("fashion-mnist")
    assert info.num_classes == 10 and info.class_names[9] == "Ankle boot"
    assert info.splits == ("train", "val", "trainval", "test")
    trainval = load("fashion-mnist", None, "trainval", CONFIG)
    train = load("fashion-mnist", None, "train", CONFIG)
    val = load("fashion-mnist", None, "val", CONFIG)
    test = load("fashion-mnist", None, "test", CONFIG)
    assert (len(trainval), len(train), len(val), len(test)) == (60000, 54000, 6000, 10000)
    # val is a fixed 10% held out of the training set: disjoint from train, together all of it
    pixels = lambda ds: {ds.images[i].tobytes() for i in range(0, len(ds), 97)}  # noqa: E731
    assert not pixels(train) & pixels(val)
    assert sorted(train.labels.tolist() + val.labels.tolist()) == sorted(trainval.labels.tolist())
    assert torch.equal(load("fashion-mnist", None, "val", CONFIG)[5][0], val[5][0])  # same every time
    x, y = trainval[0]
    assert x.shape == (3, 32, 32) and y == 9  # greyscale 28 px → RGB, resized
    assert torch.equal(x[0], x[1])
    assert set(np.unique(test.labels)) == set(range(10))


def test_synthetic_is_deterministic_and_learnable():
    a = load("synthetic:4x32", None, "train", CONFIG)
    b = load("synthetic:4x32", None, "train", CONFIG)
    assert len(a) == 64 and describe("synthetic:4x32").num_classes == 4
    assert torch.equal(a[7][0], b[7][0]) and a[7][1] == 3
    assert not torch.equal(a[0][0], load("synthetic:4x32", None, "test", CONFIG)[0][0])
    # class signal: same-class images are closer than different-class ones
    xs = torch.stack([a[i][0] for i in range(8)])
    d_same = (xs[0] - xs[4]).pow(2).mean()
    d_diff = (xs[0] - xs[1]).pow(2).mean()
    assert d_same < d_diff


def test_folder_single_and_split_lists(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            write_image(tmp_path / "pets" / cls / f"{i}.png", seed=i, mode="L")
    info = describe(f"folder:{tmp_path / 'pets'}")
    assert info.class_names == ("cat", "dog") and info.splits == ("train", "val", "trainval", "test", "all")
    ds = load(f"folder:{tmp_path / 'pets'}", None, "all", CONFIG)
    assert len(ds) == 6 and ds[5][1] == 1 and ds[0][0].shape == (3, 32, 32)
    (tmp_path / "pets" / "train.txt").write_text("cat/0.png\ndog/0.png\ndog/1.png\n")
    (tmp_path / "pets" / "test.txt").write_text("cat/2.png\n")
    assert describe("folder:pets", tmp_path).splits == ("train", "val", "trainval", "test")
    assert load("folder:pets", tmp_path, "trainval", CONFIG).targets == [0, 1, 1]
    train, val = (load("folder:pets", tmp_path, s, CONFIG) for s in ("train", "val"))
    assert (len(train), len(val)) == (2, 1)  # 10% of 3 rounds to 0: at least one held out
    assert sorted(train.targets + val.targets) == [0, 1, 1]


def test_folder_split_directories(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            write_image(tmp_path / split / cls / "x.jpg", seed=1)
    info = describe(f"folder:{tmp_path}")
    assert info.splits == ("train", "val") and info.num_classes == 3
    assert load(f"folder:{tmp_path}", None, "val", CONFIG).targets == [0, 1, 2]


def test_torchvision_spec_needs_real_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR10"):
        describe("vp:cifar10", tmp_path)
    with pytest.raises(ValueError, match="no dataset class"):
        describe("torchvision:NoSuchSet", tmp_path)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_class_reads_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(
            raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3
        )  # two images a class: one can be held out
    info = describe("torchvision:MNIST", tmp_path)
    assert info.num_classes == 10 and info.splits == ("train", "val", "trainval", "test")
    assert [len(load("torchvision:MNIST", tmp_path, s, CONFIG)) for s in info.splits] == [5, 1, 6, 3]
    ds = load("torchvision:MNIST", tmp_path, "test", CONFIG)
    x, y = ds[2]
    assert len(ds) == 3 and x.shape == (3, 32, 32) and y == 2
    assert check_dataset("torchvision:MNIST", tmp_path).ok


def test_subset_is_class_balanced_and_reproducible():
    full = load("synthetic:4x8", None, "train", CONFIG)  # 16 per class
    a, b = subset(full, 10, seed=1), subset(full, 10, seed=1)
    assert len(a) == 10 and a.targets == b.targets
    counts = np.bincount(a.targets, minlength=4)
    assert counts.max() - counts.min() <= 1  # 3, 3, 2, 2
    assert subset(full, 10, seed=2).indices != a.indices  # another seed, other items
    assert torch.equal(a[0][0], full[a.indices[0]][0])
    assert subset(full, 1000) is full
    fm = load("fashion-mnist", None, "test", CONFIG)
    small = subset(fm, 50)
    assert len(small) == 50 and np.bincount(small.labels, minlength=10).tolist() == [5] * 10
    with pytest.raises(ValueError, match="at least 1 item"):
        subset(full, 0)
