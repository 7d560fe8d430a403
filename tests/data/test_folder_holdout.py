"""A plain folder of photos (torchvision's ImageFolder layout) trains as it is: seeded, class-stratified
val and test are held out of the pool, and `data check` says which images each split uses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import vprompt
from fakes import write_image
from tiny_runs import TINY
from vprompt.cli import main
from vprompt.data import DataError, describe, load
from vprompt.data.sources.base import held_out_indices

COUNTS = {"cat": 10, "dog": 20, "owl": 5}


def photos(base: Path) -> Path:
    for c, (name, n) in enumerate(COUNTS.items()):
        (base / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (40 * c, 5 * i, 100)).save(base / name / f"{i:03d}.jpg")
    return base


def names(ds) -> list[str]:
    return [f"{s.path.parent.name}/{s.path.name}" for s in ds.samples]


def test_val_and_test_are_held_out_per_class(tmp_path):
    spec = f"folder:{photos(tmp_path / 'pets')}"
    assert describe(spec).splits == ("train", "val", "trainval", "test", "all")
    split = {s: names(load(spec, None, s, None)) for s in ("train", "val", "trainval", "test", "all")}
    per_class = {s: Counter(n.split("/")[0] for n in split[s]) for s in split}
    # round(n·0.2) to test, round(n·0.1) to val, at least one each
    assert per_class["test"] == {"cat": 2, "dog": 4, "owl": 1}
    assert per_class["val"] == {"cat": 1, "dog": 2, "owl": 1}
    assert per_class["train"] == {"cat": 7, "dog": 14, "owl": 3}
    assert set(split["train"]).isdisjoint(split["val"]) and set(split["train"]).isdisjoint(split["test"])
    assert set(split["val"]).isdisjoint(split["test"])
    assert sorted(split["trainval"]) == sorted(split["train"] + split["val"])
    assert sorted(split["all"]) == sorted(split["trainval"] + split["test"])
    # seeded: the same every time, another seed draws other images
    assert names(load(spec, None, "test", None)) == split["test"]
    assert names(load(spec + "?seed=1", None, "test", None)) != split["test"]


def test_fractions_are_options_of_the_spec(tmp_path):
    spec = f"folder:{photos(tmp_path / 'pets')}?val=0.2&test=0.4"
    test = Counter(s.path.parent.name for s in load(spec, None, "test", None).samples)
    val = Counter(s.path.parent.name for s in load(spec, None, "val", None).samples)
    assert test == {"cat": 4, "dog": 8, "owl": 2} and val == {"cat": 2, "dog": 4, "owl": 1}
    assert describe(f"folder:{tmp_path / 'pets'}?test=0").splits == ("train", "val", "trainval", "all")
    assert len(load(f"folder:{tmp_path / 'pets'}?test=0", None, "train", None)) == 35 - 4
    with pytest.raises(ValueError, match="folder option 'tset' is unknown; the options are: val, test, seed"):
        describe(f"folder:{tmp_path / 'pets'}?tset=0.2")
    with pytest.raises(ValueError, match="fractions must be in"):
        describe(f"folder:{tmp_path / 'pets'}?val=0.5&test=0.5")
    (tmp_path / "pets" / "emu").mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16)).save(tmp_path / "pets" / "emu" / f"{i}.jpg")
    with pytest.raises(ValueError, match="emu: 2 images cannot give 1 to val, 1 to test and keep one"):
        load(f"folder:{tmp_path / 'pets'}", None, "train", None)


def test_a_plain_folder_trains_and_records_its_split(tmp_path):
    spec = f"folder:{photos(tmp_path / 'pets')}?val=0.2"
    options = dict(TINY, data=spec, method="linear", epochs=1, batch_size=8)
    summary = vprompt.train(**options, output=tmp_path / "r")
    assert summary["sizes"] == {"train": 21, "val": 7} and summary["data"] == spec
    final = vprompt.train(**options, final=True, output=tmp_path / "f")
    assert final["sizes"] == {"train": 28, "test": 7}


def test_data_check_prints_which_images_each_split_uses(tmp_path, capsys):
    spec = f"folder:{photos(tmp_path / 'pets')}"
    assert main(["data", "check", spec, "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    hold_out = out.index("OK") + 1  # after the summary, before the listing
    assert out[hold_out].startswith("val and test are held out of every class of the pool: val 0.1, test 0.2")
    listed = [line.split("\t") for line in out if "\t" in line]
    assert Counter(split for split, _, _ in listed) == {"train": 24, "val": 4, "test": 7}
    assert ["test", "cat", str(load(spec, None, "test", None).samples[0].path)] in listed
    assert any(line.strip().startswith("train") and "24 images" in line for line in out)


def test_held_out_val_never_takes_a_class_s_only_image(tmp_path):
    """``train/`` without ``val/``: the held-out 10% passes over a class's last image (30 classes of one
    image and 3 of four: before, the seeded draw put single images into val, classes never trained on)."""
    counts = {f"single{i:02d}": 1 for i in range(30)} | {"many0": 4, "many1": 4, "many2": 4}
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(tmp_path / "ds" / "train" / name / f"{i}.png", seed=10 * c + i, size=4)
    spec = f"folder:{tmp_path / 'ds'}"
    split = {s: names(load(spec, None, s, None)) for s in ("train", "val", "trainval")}
    per_class = {s: Counter(n.split("/")[0] for n in split[s]) for s in split}
    assert sum(per_class["val"].values()) == 4  # round(42 · 0.1)
    assert set(per_class["val"]) <= {"many0", "many1", "many2"}
    assert set(per_class["train"]) == set(counts)  # every class keeps an image for training
    assert sorted(split["trainval"]) == sorted(split["train"] + split["val"])
    assert held_out_indices(5, [0, 0, 1, 2, 2]) == ([0, 1, 2, 3], [4])
    for name in ("many0", "many1", "many2"):  # every class down to one image: no val at all
        for i in range(1, 4):
            (tmp_path / "ds" / "train" / name / f"{i}.png").unlink()
    assert len(load(spec, None, "train", None)) == 33
    with pytest.raises(
        DataError, match=r"ds/train: every class has a single training image, so none is held"
    ):
        load(spec, None, "val", None)
