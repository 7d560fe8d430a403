"""Sweep logs say what each run is; ``sweep layers --seeds`` gives each site its mean ± sample std."""

from __future__ import annotations

import csv
import re

import pytest
from tiny_sweeps import FakeTrain, one_thread

from tiny_runs import TINY_CLI
from tiny_runs import TINY_SWEEP as TINY
from vprompt.cli import main
from vprompt.engine.rundir import RunDir
from vprompt.tools import executors, sweep
from vprompt.tools.executors import Executor, Job, labels
from vprompt.tools.sweep import base_config
from vprompt.tools.tables import mean_std

ARGS = [
    "sweep",
    "layers",
    *TINY_CLI,
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--lr",
    "0.005",
    "--train-size",
    "8",  # a run that learns little: the seeds disagree
    "--no-progress",
    "--device",
    "cpu",
    "--sites",
    "block.5",
    "block.1",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def test_labels_name_dataset_method_and_the_options_that_vary():
    base = base_config({**TINY, "method": "ap", "method_options": {"site": "block.1"}})
    jobs = [
        Job.of("o", "a", base, {"site": "block.1"}, seed=0),
        Job.of("o", "b", base, {"site": "block.3"}, seed=0, lr=0.01),
        Job.of("o", "c", base, {"site": "block.3"}, seed=1),
    ]
    assert labels(jobs) == [
        "synthetic:4x32 · ap · lr=0.05 seed=0 site=block.1",
        "synthetic:4x32 · ap · lr=0.01 seed=0 site=block.3",
        "synthetic:4x32 · ap · lr=0.05 seed=1 site=block.3",
    ]
    assert labels(jobs[:1]) == ["synthetic:4x32 · ap"]  # nothing to tell apart


def test_several_seeds_give_mean_and_sample_std_per_site(tmp_path, monkeypatch):
    fake = FakeTrain(lambda c: {"val_accuracy": 50.0 + 10 * c["seed"] + int(c["method_options"]["site"][-1])})
    monkeypatch.setattr(executors, "train", fake)
    logged: list[str] = []
    result = sweep.layers(
        TINY, tmp_path, sites=["block.1", "block.2"], seeds=[0, 1, 2], executor=Executor(log=logged.append)
    )
    rows = {r["site"]: r for r in result["rows"]}
    assert rows["block.1"]["accuracy"] == pytest.approx(61.0) and rows["block.2"]["accuracy"] == 62.0
    assert rows["block.1"]["accuracy_std"] == pytest.approx(10.0)  # 51, 61, 71: sample std 10
    assert rows["block.1"]["seeds"] == 3 and rows["block.1"]["status"] == "trained"
    assert (tmp_path / "layers" / "full" / "block.2-seed2" / "summary.json").is_file()
    assert (tmp_path / "layers" / "full" / "block.2" / "summary.json").is_file()  # the config's seed 0
    table = (tmp_path / "layers-full.md").read_text()
    assert "| block.1 | 3 | val | 61.00 ± 10.00 | 3 |" in table and "| seeds |" in table
    assert re.match(
        r"\[6/6\] layers/full/block\.2-seed2 \(synthetic:4x32 · ap · seed=2 site=block\.2\): trained",
        logged[-1],
    )


def test_seeds_are_a_count_or_a_comma_list_in_every_sweep(capsys):
    from vprompt.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["sweep", "tune", "--output", "o", "--seeds", "3"]).seeds == 3
    assert parse(["sweep", "tune", "--output", "o", "--seeds", "0,1,2"]).seeds == [0, 1, 2]
    assert parse(["sweep", "layers", "--output", "o", "--seeds", "7,"]).seeds == [7]
    assert parse(["sweep", "layers", "--output", "o", "--seed-list", "4", "5"]).seed_list == [4, 5]
    with pytest.raises(SystemExit):
        parse(["sweep", "layers", "--output", "o", "--seeds", "0;1"])
    assert "expected a count N or seeds by commas, got '0;1'" in capsys.readouterr().err


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_runs_one_seed_as_before_then_three_reusing_it(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main([*ARGS, "--output", str(out)]) == 0
    one = capsys.readouterr().out
    progress = [line for line in one.splitlines() if line.startswith("[")]
    assert len(progress) == 2
    assert progress[0].startswith("[1/2] layers/full/block.1 (synthetic:4x32 · ap · site=block.1): trained")
    table = (out / "layers-full.md").read_text()
    assert (
        "| site | depth | split | accuracy (%) | params (w/o head) | train s | peak MiB | status |" in table
    )
    assert "±" not in table and "seeds" not in read_csv(out / "layers-full.csv")[0]
    single = {r["site"]: float(r["accuracy"]) for r in read_csv(out / "layers-full.csv")}

    assert main([*ARGS, "--seeds", "0,1,2", "--output", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 6 and sum(": reused (" in line for line in lines) == 2  # seed 0 is the first sweep's
    assert "(synthetic:4x32 · ap · seed=2 site=block.5): trained" in lines[-1]
    rows = {r["site"]: r for r in read_csv(out / "layers-full.csv")}
    table = (out / "layers-full.md").read_text()
    for site in ("block.1", "block.5"):
        runs = [f"{site}", f"{site}-seed1", f"{site}-seed2"]
        accuracies = [RunDir(out / "layers" / "full" / r).read_summary()["val_accuracy"] for r in runs]
        assert accuracies[0] == single[site]
        mean, std = mean_std(accuracies)
        assert float(rows[site]["accuracy"]) == pytest.approx(mean)
        assert float(rows[site]["accuracy_std"]) == pytest.approx(std)
        assert rows[site]["seeds"] == "3" and rows[site]["status"] == "reused+trained"
        assert f"| {mean:.2f} ± {std:.2f} | 3 |" in table
    assert any(float(r["accuracy_std"]) > 0 for r in rows.values())
    assert (out / "layers-full.png").is_file()
