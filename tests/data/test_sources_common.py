"""What every data source promises: its spec resolves to a source whose ``info`` is consistent (as many
class names as classes), every split it declares loads through ``vprompt.data.load`` with a transform as
``(tensor, int label)`` items with labels in range, and ``describe`` / ``check_dataset`` report it OK.

One case per registered family, each on a small fake root written in a tmp dir (or data given as Python
objects, for ``python``); ``test_every_source_family_is_covered`` fails when a family is added without one.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fakes import CONFIG, VTAB_FULL, vtab_root, write_image
from vprompt.data import check_dataset, describe, load
from vprompt.data.sources import from_objects, resolve
from vprompt.data.sources.base import SOURCES, USAGE

#: items looked at per split (the contract, not a full pass: VTAB-1k lists 800 lines)
ITEMS = 4


def idx(path, array: np.ndarray, gz: bool = False) -> None:
    data = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


def mnist_idx(raw, gz: bool) -> None:
    """MNIST-style idx files (6 train, 3 test, 3 classes) in ``raw``."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", 6), ("t10k", 3)):
        idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz)
        idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 3, gz)


# each builder writes its family's fake data under ``tmp`` and gives ``(spec or Source, root)``


def vtab1k(tmp):
    return "vtab1k:eurosat", vtab_root(tmp, sizes=VTAB_FULL, images=10, image_size=8)


def fgvc(tmp):
    for split, classes in {"train": range(102), "val": range(0, 102, 20), "test": range(1, 102, 25)}.items():
        ann = {}
        for c in classes:
            write_image(tmp / "OxfordFlower" / f"jpg/{split}_{c:03d}.jpg", seed=c, size=8)
            ann[f"jpg/{split}_{c:03d}.jpg"] = c + 1
        (tmp / "OxfordFlower" / f"{split}.json").write_text(json.dumps(ann))
    return "fgvc:flowers", tmp


def vp(tmp):
    names = ["AnnualCrop", "Forest", "HerbaceousVegetation"]
    data = {}
    for split, n in {"train": 6, "val": 3, "test": 3}.items():
        data[split] = []
        for i in range(n):
            rel = f"{names[i % 3]}/{names[i % 3]}_{split}{i}.jpg"
            write_image(tmp / "eurosat" / "2750" / rel, seed=i, size=10)
            data[split].append([rel, i % 3, names[i % 3]])
    (tmp / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(data))
    return "vp:eurosat", tmp


def folder(tmp):
    for c, name in enumerate(("cat", "dog")):
        for i in range(10):
            write_image(tmp / "pets" / name / f"{i}.jpg", seed=10 * c + i, size=10)
    return f"folder:{tmp / 'pets'}", None


def synthetic(tmp):
    return "synthetic:3x16", None


def torchvision(tmp):
    mnist_idx(tmp / "MNIST" / "raw", gz=False)
    return "torchvision:MNIST", tmp


def fashion_mnist(tmp):
    mnist_idx(tmp / "FashionMNIST" / "raw", gz=True)
    return "fashion-mnist", tmp


def mnist5k(tmp):
    rows = [",".join(map(str, [i] * 784 + [i % 10])) for i in range(50)]
    with gzip.open(tmp / "mnist_5k.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    return "mnist-5k", tmp


def textile(tmp):
    for name, n in (("nominal", 10), ("local", 5), ("global", 5)):
        for i in range(n):
            write_image(tmp / name / f"textile_{i:04d}.jpg", seed=100 * len(name) + i, size=12)
    return "textile", tmp


def hf(tmp):
    pytest.importorskip("datasets", reason="hf: needs the Hugging Face datasets library")
    for split, n in (("train", 10), ("test", 4)):
        for i in range(n):
            write_image(tmp / "pics" / split / ("cat", "dog")[i % 2] / f"{i}.png", seed=i, size=10)
    return f"hf:imagefolder:{tmp / 'pics'}", None


class Pictures(torch.utils.data.Dataset):
    classes = ["red", "green"]

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return Image.new("RGB", (10, 10), (200, 0, 0) if i % 2 == 0 else (0, 200, 0)), i % 2


def python(tmp):
    return from_objects({"train": Pictures(10), "test": Pictures(4)}), None


#: family (its first registered name) → builder
CASES = {
    "vtab1k": vtab1k,
    "fgvc": fgvc,
    "vp": vp,
    "folder": folder,
    "synthetic": synthetic,
    "torchvision": torchvision,
    "fashion-mnist": fashion_mnist,
    "mnist-5k": mnist5k,
    "textile": textile,
    "hf": hf,
    "python": python,
}


def test_every_source_family_is_covered():
    assert set(USAGE) == set(CASES), "add a case for each new source family"
    assert len(set(SOURCES.values())) == len(
        USAGE
    )  # every factory registered once, under its first name and aliases


@pytest.mark.parametrize("family", CASES)
def test_source_contract(family, tmp_path):
    spec, root = CASES[family](tmp_path)
    source = resolve(spec, root)
    info = source.info
    if isinstance(spec, str):
        assert describe(spec, root) == info
        assert info.spec == spec
    assert info.num_classes >= 2 and len(info.class_names) == info.num_classes
    assert all(isinstance(n, str) and n for n in info.class_names)
    assert len(set(info.class_names)) == info.num_classes, info.class_names
    assert info.splits and len(set(info.splits)) == len(info.splits)
    for split in info.splits:
        ds = load(source, root, split, CONFIG)
        assert len(ds) > 0, split
        for i in range(min(ITEMS, len(ds))):
            x, y = ds[i]
            assert isinstance(x, torch.Tensor) and tuple(x.shape) == CONFIG["input_size"], (split, i)
            assert x.dtype == torch.float32 and torch.isfinite(x).all()
            assert type(y) is int and 0 <= y < info.num_classes, (split, i, y)
    report = check_dataset(source, root, full=False)  # the splits `data check` looks at by default
    assert report.ok and report.splits, report.summary()
    assert {s.split for s in report.splits} <= set(info.splits)
    report = check_dataset(source, root, splits=list(info.splits), full=False)
    assert report.ok, report.summary()
    assert [s.split for s in report.splits] == list(info.splits)


def test_the_python_family_is_refused_as_a_string():
    with pytest.raises(ValueError, match="Python objects"):
        resolve("python:anything")
