"""Fake datasets on disk, in the real layouts, with tiny real image files written by PIL."""

import json
from pathlib import Path

import pytest

import fakes
from fakes import write_image


@pytest.fixture
def vtab_root(tmp_path) -> Path:
    """``<root>/eurosat/{train800,val200,train800val200,test}.txt`` with a few JPEGs each."""
    return fakes.vtab_root(tmp_path)


@pytest.fixture
def fgvc_root(tmp_path) -> Path:
    """VPT's Oxford Flowers layout: ``<root>/OxfordFlower/{train,val,test}.json``, image paths relative to it.

    Labels are 1-based (1..102) to exercise the mapping to 0..101; every class appears once in train.
    """
    folder = tmp_path / "OxfordFlower"
    splits = {"train": range(102), "val": range(0, 102, 20), "test": range(1, 102, 25)}
    for split, classes in splits.items():
        ann = {}
        for c in classes:
            rel = f"jpg/{split}_{c:03d}.jpg"
            write_image(folder / rel, seed=c, size=8)
            ann[rel] = c + 1
        (folder / f"{split}.json").write_text(json.dumps(ann))
    return tmp_path


@pytest.fixture
def coop_root(tmp_path) -> Path:
    """CoOp EuroSAT: ``<root>/eurosat/split_zhou_EuroSAT.json`` with images under ``<root>/eurosat/2750/``."""
    folder = tmp_path / "eurosat"
    names = ["AnnualCrop", "Forest", "HerbaceousVegetation"]
    data = {}
    for split, n in {"train": 6, "val": 3, "test": 3}.items():
        rows = []
        for i in range(n):
            label = i % 3
            rel = f"{names[label]}/{names[label]}_{split}{i}.jpg"
            write_image(folder / "2750" / rel, seed=i, size=10)
            rows.append([rel, label, names[label]])
        data[split] = rows
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps(data))
    return tmp_path
