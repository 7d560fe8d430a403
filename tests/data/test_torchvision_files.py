"""The VP set's torchvision loaders (``vp:cifar10``, ``vp:cifar100``, ``vp:svhn``, ``vp:gtsrb``) on tiny
files written here in each dataset's exact on-disk format, read through vprompt's user path.

torchvision checks the md5 of the CIFAR and SVHN files it knows; the tests point those checks at the tiny
files' own md5 (the check still runs). CIFAR batches are pickles that torchvision itself unpickles: that is
torchvision's documented format for them; vprompt never unpickles anything.
"""

import csv
import hashlib
import pickle

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from vprompt.data import check_dataset, describe, load
from vprompt.data.sources.base import held_out_indices

CONFIG = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3, "interpolation": "bilinear"}


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cifar_batch(path, pixels: np.ndarray, labels: list[int], label_key: str) -> None:
    """A CIFAR python batch: ``data`` N×3072 (the R, G, B planes of each image, row-major) and labels."""
    data = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), 3072)
    with open(path, "wb") as f:
        pickle.dump({"batch_label": "tiny", label_key: labels, "data": data}, f)


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    per_batch, batches = 4, {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = (images(per_batch, i), [(i + j) % 10 for j in range(per_batch)])
    batches["test_batch"] = (images(6, 9), [9, 8, 7, 6, 5, 4])
    for name, (pixels, labels) in batches.items():
        cifar_batch(folder / name, pixels, labels, "labels")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)
    monkeypatch.setattr(
        tvd.CIFAR10, "train_list", [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
    )
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setitem(tvd.CIFAR10.meta, "md5", md5(folder / "batches.meta"))
    return tmp_path, batches, names


def test_cifar10_batches(cifar10):
    root, batches, names = cifar10
    info = describe("vp:cifar10", root)
    assert info.class_names == tuple(names) and info.splits == ("train", "val", "trainval", "test")
    trainval = load("vp:cifar10", root, "trainval", None)
    labels = [y for i in range(1, 6) for y in batches[f"data_batch_{i}"][1]]
    assert len(trainval) == 20 and trainval.targets == labels
    image, label = trainval[5]  # batch 2, item 1
    assert label == labels[5] and np.array_equal(np.asarray(image), batches["data_batch_2"][0][1])
    train_idx, val_idx = held_out_indices(20, labels)  # never a class's last image
    assert load("vp:cifar10", root, "val", None).targets == [labels[i] for i in val_idx]
    assert len(load("vp:cifar10", root, "train", None)) == len(train_idx) == 18
    test = load("vp:cifar10", root, "test", CONFIG)
    x, y = test[0]
    assert tuple(x.shape) == (3, 32, 32) and y == 9 and len(test) == 6
    assert check_dataset("vp:cifar10", root).ok


def test_cifar100_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = images(10, 0), images(3, 1)
    cifar_batch(folder / "train", train, [0, 99, 5, 7, 42, 1, 2, 3, 4, 98], "fine_labels")
    cifar_batch(folder / "test", test, [99, 0, 50], "fine_labels")
    names = [f"fine{i}" for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(tvd.CIFAR100, "meta", {**tvd.CIFAR100.meta, "md5": md5(folder / "meta")})
    info = describe("vp:cifar100", tmp_path)
    assert info.num_classes == 100 and info.class_names[99] == "fine99"
    ds = load("vp:cifar100", tmp_path, "test", None)
    assert ds.targets == [99, 0, 50] and np.array_equal(np.asarray(ds[2][0]), test[2])


def test_svhn_mat_files_and_label_10_is_digit_0(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    train, test = images(12, 0), images(4, 1)
    for name, pixels, y in (
        ("train", train, [10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1]),
        ("test", test, [3, 10, 1, 2]),
    ):
        # SVHN's cropped digits: X is 32×32×3×N, y is N×1 with 10 for the digit 0
        scipy_io.savemat(
            tmp_path / f"{name}_32x32.mat", {"X": pixels.transpose(1, 2, 3, 0), "y": np.array(y)[:, None]}
        )
    split_list = {
        k: [*v[:2], md5(tmp_path / v[1])] if k in ("train", "test") else v
        for k, v in tvd.SVHN.split_list.items()
    }
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    info = describe("vp:svhn", tmp_path)
    assert info.splits == ("train", "val", "trainval", "test")  # SVHN has no val: held out
    assert info.class_names == tuple(str(i) for i in range(10))
    ds = load("vp:svhn", tmp_path, "test", None)
    assert ds.targets == [3, 0, 1, 2]
    assert np.array_equal(np.asarray(ds[1][0]), test[1])
    assert (
        len(load("vp:svhn", tmp_path, "val", None)) == 1
        and len(load("vp:svhn", tmp_path, "train", None)) == 11
    )
    assert check_dataset("vp:svhn", tmp_path).ok


def test_gtsrb_class_folders_and_test_csv(tmp_path):
    base = tmp_path / "gtsrb" / "GTSRB"
    for c in range(43):  # GTSRB/Training/000NN/*.ppm, one folder per class
        folder = base / "Training" / f"{c:05d}"
        folder.mkdir(parents=True)
        for j in range(2 if c < 3 else 1):
            Image.fromarray(images(1, c * 10 + j)[0]).save(folder / f"00000_{j:05d}.ppm")
    test_dir = base / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    truth = [(f"{i:05d}.ppm", c) for i, c in enumerate([42, 0, 17])]
    for name, _ in truth:
        Image.fromarray(images(1, 99)[0]).save(test_dir / name)
    with open(tmp_path / "gtsrb" / "GT-final_test.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        w.writerows([[name, 32, 32, 0, 0, 31, 31, c] for name, c in truth])
    info = describe("vp:gtsrb", tmp_path)
    assert info.num_classes == 43 and info.splits == ("train", "val", "trainval", "test")
    trainval = load("vp:gtsrb", tmp_path, "trainval", None)
    assert len(trainval) == 46 and trainval.targets == [0, 0, 1, 1, 2, 2, *range(3, 43)]
    assert load("vp:gtsrb", tmp_path, "test", None).targets == [42, 0, 17]
    x, y = load("vp:gtsrb", tmp_path, "test", CONFIG)[0]
    assert tuple(x.shape) == (3, 32, 32) and y == 42
    assert check_dataset("vp:gtsrb", tmp_path).ok
