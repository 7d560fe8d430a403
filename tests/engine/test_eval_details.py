"""What an evaluation shows beyond accuracy: top-k and per-class accuracy, the confusion matrix and each
image's prediction, checked against a hand count over the saved predictions."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import vprompt
from tiny_runs import TINY
from vprompt.cli import main
from vprompt.engine.rundir import RunDir

CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A linear head trained for one epoch on noise images (so that it makes mistakes), 6 classes of
    10 images each in class folders (val 1, test 2 per class held out), details written at the end."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    out = tmp_path_factory.mktemp("runs") / "r"
    config = dict(TINY, data=f"folder:{root}", epochs=1, batch_size=8, device="cpu", details=True)
    summary = vprompt.train(config, method="linear", output=out)
    return out, root, summary


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def hand_count(rows: list[dict[str, str]]) -> dict:
    """Accuracy, top-5 accuracy, per-class accuracy and confusion counted from predictions.csv rows."""
    n = len(rows)
    hits = [r["label"] == r["prediction"] for r in rows]
    assert [int(r["correct"]) for r in rows] == [int(h) for h in hits]
    top5 = [r["label_id"] in r["top_k_ids"].split() for r in rows]
    assert all(len(r["top_k_ids"].split()) == 5 for r in rows)
    assert all(r["top_k_ids"].split()[0] == r["prediction_id"] for r in rows)  # the top-1 comes first
    assert all(CLASSES[int(r["label_id"])] == r["label"] for r in rows)
    per_class = {}
    for name in CLASSES:
        mine = [h for r, h in zip(rows, hits, strict=True) if r["label"] == name]
        per_class[name] = 100.0 * sum(mine) / len(mine)
    pairs = Counter((r["label"], r["prediction"]) for r in rows)
    return {
        "accuracy": 100.0 * sum(hits) / n,
        "top_k_accuracy": 100.0 * sum(top5) / n,
        "per_class_accuracy": per_class,
        "confusion": [[pairs[(t, p)] for p in CLASSES] for t in CLASSES],
        "images": n,
    }


def check_folder(folder, split_size: int, root) -> dict:
    rows = read_csv(folder / "predictions.csv")
    assert len(rows) == split_size and [int(r["index"]) for r in rows] == list(range(split_size))
    for r in rows:  # the image file of each prediction, in its class folder
        assert r["path"].startswith(str(root / r["label"])) and r["path"].endswith(".png")
        assert 0 < float(r["confidence"]) <= 1
    expected = hand_count(rows)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["top_k"] == 5
    for key in ("accuracy", "top_k_accuracy", "images", "per_class_accuracy"):
        assert metrics[key] == pytest.approx(expected[key]), key
    confusion = read_csv(folder / "confusion.csv")
    assert [r["true \\ predicted"] for r in confusion] == CLASSES
    assert [[int(r[c]) for c in CLASSES] for r in confusion] == expected["confusion"]
    per_class = read_csv(folder / "per_class.csv")
    assert [(r["class"], int(r["images"])) for r in per_class] == [(c, split_size // 6) for c in CLASSES]
    assert [float(r["accuracy"]) for r in per_class] == pytest.approx(
        list(expected["per_class_accuracy"].values())
    )
    assert (folder / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return expected


def test_the_summary_and_its_folder_agree_with_a_hand_count(run):
    out, root, summary = run
    expected = check_folder(out / "eval-val", 6, root)
    assert summary["top_k"] == 5
    assert summary["val_accuracy"] == pytest.approx(expected["accuracy"])
    assert summary["val_top_k_accuracy"] == pytest.approx(expected["top_k_accuracy"])
    assert summary["val_per_class_accuracy"] == pytest.approx(expected["per_class_accuracy"])
    assert 0 < expected["accuracy"] < 100 and expected["accuracy"] <= expected["top_k_accuracy"]
    assert RunDir(out).foreign_entries() == []  # eval-<split>/ is the run's own


def test_eval_details_on_any_split(run, capsys):
    out, root, _ = run
    assert main(["eval", str(out), "--split", "test", "--details", "--device", "cpu"]) == 0
    line, where = capsys.readouterr().out.splitlines()
    printed = json.loads(line)
    assert where.endswith(str(out / "eval-test"))
    expected = check_folder(out / "eval-test", 12, root)
    assert (printed["split"], printed["top_k"], printed["images"]) == ("test", 5, 12)
    assert printed["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-4)
    assert printed["top_k_accuracy"] == pytest.approx(expected["top_k_accuracy"], abs=1e-4)
    result = vprompt.evaluate_run(out, split="test", device="cpu")  # the Python API, without files
    assert result["per_class_accuracy"] == pytest.approx(expected["per_class_accuracy"])
    assert result["confusion"] == expected["confusion"] and "details" not in result


def test_top_k_is_the_number_of_classes_when_there_are_fewer_than_5(tmp_path, capsys):
    summary = vprompt.train(dict(TINY, epochs=1, device="cpu"), method="linear", output=tmp_path / "r")
    assert summary["top_k"] == 4 and summary["val_top_k_accuracy"] == 100.0  # 4 classes: top-4
    assert set(summary["val_per_class_accuracy"]) == {f"class_{i}" for i in range(4)}
    assert not any(p.name.startswith("eval-") for p in (tmp_path / "r").iterdir())  # only with details
    assert main(["eval", str(tmp_path / "r"), "--split", "val", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["top_k"] == 4 and printed["top_k_accuracy"] == 100.0
