"""``hf:`` specs: small datasets built here with ``datasets`` (save_to_disk, parquet, imagefolder), read
through vprompt's user path and trained on with a tiny random-init ViT."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

import vprompt  # noqa: E402
from tiny_runs import TINY  # noqa: E402
from vprompt.cli import main  # noqa: E402
from vprompt.data import DataError, check_dataset, describe, load  # noqa: E402
from vprompt.data.sources import hf as hf_module  # noqa: E402
from vprompt.data.sources.hf import with_columns  # noqa: E402

COARSE = ["animal", "thing"]
FINE = ["cat", "dog", "car", "cup"]


def pictures(n: int, seed: int) -> tuple[list, list[int]]:
    """Learnable 32-px images: a class colour plus noise; labels cycle through the four fine classes."""
    rng = np.random.default_rng(seed)
    colours = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]])
    labels = [i % 4 for i in range(n)]
    images = [
        Image.fromarray(np.clip(colours[y] + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8))
        for y in labels
    ]
    return images, labels


def features():
    return datasets.Features(
        {
            "picture": datasets.Image(),
            "coarse": datasets.ClassLabel(names=COARSE),
            "fine": datasets.ClassLabel(names=FINE),
            "note": datasets.Value("string"),
        }
    )


def split(n: int, seed: int):
    images, fine = pictures(n, seed)
    rows = {"picture": images, "coarse": [y // 2 for y in fine], "fine": fine, "note": ["x"] * n}
    return datasets.Dataset.from_dict(rows, features=features())


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A save_to_disk folder with train (40) and test (12), no validation split."""
    folder = tmp_path_factory.mktemp("hf") / "saved"
    datasets.DatasetDict(train=split(40, 0), test=split(12, 1)).save_to_disk(str(folder))
    return folder


def test_save_to_disk_folder_splits_held_out_val_and_class_names(saved):
    info = describe(f"hf:{saved}")
    assert info.family == "hf" and info.splits == ("train", "val", "trainval", "test")
    assert info.num_classes == 2 and info.class_names == tuple(COARSE)  # the first ClassLabel
    sizes = {s: len(load(f"hf:{saved}", None, s, None)) for s in info.splits}
    assert sizes == {"train": 36, "val": 4, "trainval": 40, "test": 12}
    image, label = load(f"hf:{saved}", None, "test", None)[5]
    assert image.mode == "RGB" and image.size == (32, 32) and label == 5 % 4 // 2


def test_label_column_named_and_relative_path_under_root(saved):
    spec = with_columns("hf:saved", label="fine")
    assert spec == "hf:saved?label=fine"
    info = describe(spec, saved.parent)
    assert info.num_classes == 4 and info.class_names == tuple(FINE)
    assert load(spec, saved.parent, "test", None).targets == [i % 4 for i in range(12)]
    with pytest.raises(DataError, match="no label column 'nope'; columns: picture, coarse, fine, note"):
        describe("hf:saved?label=nope", saved.parent)
    with pytest.raises(
        DataError, match=r"^hf:saved\?image=note: column 'note' \(string\) does not hold images"
    ):
        describe("hf:saved?image=note", saved.parent)  # a string column: read as paths, 'x' is none
    with pytest.raises(
        DataError, match=r"hf:saved\?image=fine: column 'fine' \(int64\) does not hold images"
    ):
        describe("hf:saved?image=fine", saved.parent)
    with pytest.raises(ValueError, match="apply to hf: data specs only"):
        with_columns("synthetic:4x32", label="fine")
    with pytest.raises(ValueError, match="unknown option"):
        describe("hf:saved?labels=fine", saved.parent)


def test_parquet_folder_with_validation_and_single_file(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    for name, n, seed in (("train", 24, 0), ("validation", 8, 1), ("test", 6, 2)):
        split(n, seed).to_parquet(str(folder / f"{name}-00000-of-00001.parquet"))
    info = describe(f"hf:{folder}?label=fine")
    assert info.splits == ("train", "val", "trainval", "test") and info.class_names == tuple(FINE)
    sizes = {s: len(load(f"hf:{folder}?label=fine", None, s, None)) for s in info.splits}
    assert sizes == {"train": 24, "val": 8, "trainval": 32, "test": 6}  # native val: nothing held out
    single = describe(f"hf:{folder / 'test-00000-of-00001.parquet'}")
    assert single.splits == ("train", "val", "trainval")


def test_imagefolder_class_names_from_folders(tmp_path):
    images, labels = pictures(16, 3)
    for part, rng in (("train", range(12)), ("test", range(12, 16))):
        for i in rng:
            path = tmp_path / "imgs" / part / FINE[labels[i]] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            images[i].save(path)
    spec = f"hf:imagefolder:{tmp_path / 'imgs'}"
    info = describe(spec)
    assert info.class_names == tuple(sorted(FINE)) and info.splits == ("train", "val", "trainval", "test")
    report = check_dataset(spec)
    assert report.ok, report.summary()
    ds = load(spec, None, "test", None)
    assert sorted(info.class_names[t] for t in ds.targets) == sorted(FINE)
    for image, label in ds:  # each image has its class's colour
        strongest = np.asarray(image).reshape(-1, 3).mean(0) > 135
        assert (
            strongest.tolist()
            == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]][FINE.index(info.class_names[label])]
        )


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match="no such local folder or file, and the Hub is off.*save_to_disk"
    ):
        describe("hf:someone/not-a-local-dataset")


def test_train_through_hf_data_with_label_column(saved, tmp_path):
    out = tmp_path / "run"
    summary = vprompt.train(
        {**TINY, "data": f"hf:{saved}", "label_column": "fine", "epochs": 2},
        method="linear",
        output=out,
        final=True,
    )
    assert summary["sizes"] == {"train": 40, "test": 12}
    assert summary["test_accuracy"] is not None and 0 <= summary["test_accuracy"] <= 100
    config = (out / "config.yaml").read_text()
    assert "label_column: fine" in config
    assert json.loads((out / "summary.json").read_text())["data"] == f"hf:{saved}"
    assert vprompt.load_run(out).num_classes == 4


def test_cli_train_and_check_with_label_column(saved, tmp_path, capsys):
    assert main(["data", "check", f"hf:{saved}", "--label-column", "fine"]) == 0
    assert "4 classes" in capsys.readouterr().out
    args = [
        "train",
        "--backbone",
        TINY["backbone"],
        "--random-init",
        "--img-size",
        "32",
        "--method",
        "linear",
    ]
    args += ["--data", f"hf:{saved}", "--label-column", "fine", "--epochs", "1", "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["sizes"] == {"train": 36, "val": 4}


def plain(labels: list[int], seed: int):
    """Rows whose label column holds plain integers (no ClassLabel)."""
    images, _ = pictures(len(labels), seed)
    kinds = datasets.Features({"picture": datasets.Image(), "y": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"picture": images, "y": labels}, features=kinds)


def test_sparse_integer_labels_are_contiguous_classes_named_by_their_value(tmp_path):
    folder = tmp_path / "sparse"
    datasets.DatasetDict(train=plain([200, 3, 10, 3, 200, 10], 0), test=plain([10, 7], 1)).save_to_disk(
        folder
    )
    info = describe(f"hf:{folder}?label=y")
    assert info.num_classes == 4  # not 201 with 197 empty ones
    assert info.class_names == ("class_3", "class_7", "class_10", "class_200")  # 7: a test-only value
    assert load(f"hf:{folder}?label=y", None, "trainval", None).targets == [3, 0, 2, 0, 3, 2]
    assert load(f"hf:{folder}?label=y", None, "test", None).targets == [2, 1]
    dense = tmp_path / "dense"
    plain([0, 1, 2, 1], 2).save_to_disk(dense)  # 0..K-1: the classes and names as before
    assert describe(f"hf:{dense}?label=y").class_names == ("class_0", "class_1", "class_2")
    negative = tmp_path / "negative"
    datasets.DatasetDict(train=plain([1, 2], 3), test=plain([2, -1], 4)).save_to_disk(negative)
    with pytest.raises(DataError, match=r"\[test\]: label -1 at row 1 out of range \[0, 2\)"):
        load(f"hf:{negative}?label=y", None, "test", None)


def test_an_empty_dataset_is_one_line_naming_it(tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    plain([], 0).save_to_disk(folder)
    with pytest.raises(DataError, match="is it empty") as error:
        describe(f"hf:{folder}?label=y")
    assert str(error.value).startswith(f"hf:{folder}: datasets cannot read {folder} (")
    assert "\n" not in str(error.value)
    loaded = datasets.DatasetDict(train=plain([0, 1], 0), test=plain([], 1))  # e.g. from the Hub
    monkeypatch.setattr(hf_module, "load_hf", lambda target, root, config: (loaded, "hub"))
    with pytest.raises(
        DataError, match=r"^hf:x\?label=y: the test split holds no rows \(an empty dataset\)$"
    ):
        describe("hf:x?label=y")
