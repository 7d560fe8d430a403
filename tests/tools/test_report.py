"""Reports: every number in the tables is checked against the run summaries it comes from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tiny_sweeps import one_thread

from tiny_runs import TINY_SWEEP as TINY
from vprompt.engine.rundir import RunDir
from vprompt.tools import report, sweep
from vprompt.tools.executors import Executor
from vprompt.tools.tables import mean_std, pm

QUIET = Executor(log=None)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """AP at two sites (final), linear probing tuned on one grid point then run with three seeds."""
    root = tmp_path_factory.mktemp("runs")
    sweep.layers({**TINY, "final": True}, root / "layers", sites=["block.1", "block.5"], executor=QUIET)
    sweep.tune({**TINY, "method": "linear"}, root / "linear", lrs=[0.05], seeds=3, executor=QUIET)
    RunDir(root / "broken").write_config({"method": "ap"})  # a run that died before its first epoch
    (root / "broken" / "error.txt").write_text("Traceback ...\nValueError: planted failure\n")
    RunDir(root / "killed").write_config({"method": "ap"})  # interrupted, no error recorded
    return root


def summaries(row: dict) -> list[dict]:
    return [json.loads((Path(p) / "summary.json").read_text()) for p in row["runs"].split(" ")]


def test_report_numbers_match_the_run_summaries(runs, tmp_path):
    result = report.write_report([runs], tmp_path)
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # ap ×2 sites (test), linear final (test), linear grid point (val)
    labels = {(r["split"], r["label"]): r for r in rows}
    assert set(labels) == {
        ("test", "ap site=block.1"),
        ("test", "ap site=block.5"),
        ("test", "linear"),
        ("val", "linear"),
    }
    for row in rows:
        found = summaries(row)
        accuracies = [s[f"{row['split']}_accuracy"] for s in found]
        mean, std = mean_std(accuracies)
        assert int(row["n"]) == len(found) and float(row["accuracy_mean"]) == pytest.approx(mean)
        assert float(row["accuracy_std"]) == pytest.approx(std)
        assert int(row["trainable_parameters"]) == found[0]["trainable_parameters"]
        assert int(row["trainable_parameters_without_head"]) == found[0]["trainable_parameters_without_head"]
        for key in ("train_seconds", "peak_memory_mib"):  # means over the runs
            assert float(row[key]) == pytest.approx(sum(s[key] for s in found) / len(found))
    final_linear = labels[("test", "linear")]
    assert final_linear["seeds"] == "0 1 2" and int(final_linear["n"]) == 3
    # the same numbers in the markdown tables
    text = (tmp_path / "report.md").read_text()
    cells = [pm(float(r["accuracy_mean"]), float(r["accuracy_std"]), int(r["n"])) for r in rows]
    test_pivot = text.split("## Test accuracy")[1].split("###")[0]
    assert "| dataset | backbone | ap site=block.1 | ap site=block.5 | linear |" in test_pivot
    assert f"| synthetic:4x32 | vit_tiny_patch16_224 | {cells[0]} | {cells[1]} | {cells[2]} |" in test_pivot
    assert "± " in cells[2] and "6 finished runs in 4 configurations" in text
    with open(tmp_path / "runs.csv") as f:
        per_run = list(csv.DictReader(f))
    assert len(per_run) == 6
    for r in per_run:
        s = json.loads((Path(r["run"]) / "summary.json").read_text())
        assert float(r["accuracy"]) == pytest.approx(s["accuracy"]) and int(r["seed"]) == s["seed"]
    # failed and unfinished runs are listed, plots drawn
    assert result["failed"] == [{"run": str(runs / "broken"), "error": "ValueError: planted failure"}]
    assert result["unfinished"] == [str(runs / "killed")]
    assert "planted failure" in text and "killed" in text
    for name in ("layer_preference.png", "accuracy_vs_parameters.png", "accuracy_vs_cost.png"):
        assert (tmp_path / name).stat().st_size > 1000 and f"({name})" in text


def test_labels_name_what_sets_configurations_apart():
    def run(seed, **options):
        base = {"data": "d", "method": "ap", "lr": 0.1, "site": "block.1", "device": "cpu"}
        summary = {"seed": seed, "test_accuracy": 50.0 + seed}
        return report.Run(Path(f"r{seed}"), summary, report.configuration({**base, **options, "seed": seed}))

    groups = report.group_runs(
        [run(0), run(1, device="cuda"), run(0, lr=0.01), run(0, site="block.2", lr=0.01)]
    )
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("ap lr=0.01 site=block.1", 1),
        ("ap lr=0.01 site=block.2", 1),
        ("ap lr=0.1 site=block.1", 2),
    ]
    assert report.configuration(
        {"seed": 3, "root": "/x", "lr": 0.1, "method_options": {"site": "embed"}}
    ) == {"lr": 0.1, "site": "embed"}


def test_layer_series_put_aap_next_to_ap():
    def run(method, site, accuracy, **options):
        config = {"data": "d", "method": method, "lr": 0.1, "site": site, "shape": "full", **options}
        summary = {"seed": 0, "val_accuracy": accuracy}
        return report.Run(Path(f"{method}-{site}"), summary, report.configuration(config))

    runs = [run("ap", "block.1", 50.0), run("ap", "block.3", 60.0)]
    runs += [run("aap", "block.1", 55.0, hidden=8), run("aap", "block.3", 65.0, hidden=8)]
    runs += [run("vapt", "block.1", 99.0)]  # not a site method: no series
    series = report.layer_series(report.group_runs(runs))
    assert series == {
        "split=val method=aap": [("block.1", 55.0, 0.0, 1), ("block.3", 65.0, 0.0, 1)],
        "split=val method=ap": [("block.1", 50.0, 0.0, 1), ("block.3", 60.0, 0.0, 1)],
    }


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no run directories"):
        report.write_report([tmp_path], tmp_path / "report")
    with pytest.raises(FileNotFoundError):
        report.write_report([tmp_path / "nope"], tmp_path / "report")
