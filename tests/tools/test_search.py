"""The early-stopping search's decisions are Optuna's: SuccessiveHalvingPruner's rule as it is (asked in
grid order, ties go on, small rungs keep at least one), only validation reaches it, stopped points are not
trained further; and without Optuna ``--search asha`` fails at once with one line while the grid never
imports it. Runs are stood in for by a fake executor (no training: the rules, in milliseconds)."""

from __future__ import annotations

import random
import sys
from importlib.metadata import version

import pytest
from tiny_sweeps import FakeTrain, optuna_keeps

from tiny_runs import TINY_CLI, TINY_SWEEP
from vprompt.cli import main
from vprompt.tools import executors, sweep
from vprompt.tools.executors import Job, Outcome
from vprompt.tools.search import Asha, halve


class Epochs:
    """Stands in for an executor: point ``i`` has validation accuracy ``val[i][e - 1]`` after epoch ``e``
    (and a test accuracy that ranks the points the other way round); records every job it runs."""

    def __init__(self, val: list[list[float]]):
        self.val, self.ran = val, []

    def run(self, jobs: list[Job]) -> list[Outcome]:
        self.ran += [(job.name, job.pause) for job in jobs]
        return [self.outcome(job) for job in jobs]

    def outcome(self, job: Job) -> Outcome:
        accuracies = self.val[int(job.name[1:])]
        if job.pause is None:
            summary = {"val_accuracy": accuracies[-1], "test_accuracy": 100 - accuracies[-1]}
            return Outcome(job.name, job.output, "trained", summary)
        rows = [{"val_accuracy": v, "test_accuracy": 100 - v} for v in accuracies[: job.pause]]
        return Outcome(job.name, job.output, "paused", {"paused": job.pause, "metrics": rows, "compute": {}})


def search(val: list[list[float]], grace: int = 1, reduction: int = 2):
    jobs = [
        Job.of("out", f"p{i}", {"method_options": {}, "weight_decay": 0.0}, lr=0.1 / (i + 1))
        for i in range(len(val))
    ]
    executor = Epochs(val)
    outcomes, record = halve(Asha(grace, reduction), len(val[0]), jobs, executor)
    return outcomes, record, executor.ran


def kept(record: dict, rung: int = 0) -> list[bool]:
    return [p["kept"] for p in record["rung_results"][rung]["points"]]


def test_the_rung_decisions_are_optunas_asked_in_grid_order():
    # rising in grid order: each is the best so far, all go on (a synchronous rule would keep 2 of 4);
    # falling at the next rung: only the first asked goes on
    outcomes, record, ran = search([[10, 40, 0, 0], [20, 30, 0, 0], [30, 20, 0, 0], [40, 10, 0, 0]])
    assert record["engine"] == f"optuna {version('optuna')}" and record["pruner"] == "SuccessiveHalvingPruner"
    assert (
        record["rungs"] == [1, 2]
        and kept(record, 0) == [True] * 4
        and kept(record, 1) == [True, False, False, False]
    )
    assert record["stopped"] == [
        {"run": f"p{i}", "rung": 2, "epoch": 2, "val_accuracy": 40 - 10 * i, "epochs_skipped": 2}
        for i in (1, 2, 3)
    ]
    assert [o.status for o in outcomes] == ["trained", "stopped", "stopped", "stopped"]
    assert {"run": "p2", **outcomes[2].summary["search_stopped"]} == record["stopped"][1]
    # every point to epoch 1, every point to epoch 2, then only the survivor to its end: no stopped run goes on
    assert ran == [(f"p{i}", 1) for i in range(4)] + [(f"p{i}", 2) for i in range(4)] + [("p0", None)]


def test_ties_go_on_and_a_small_rung_keeps_at_least_the_first_asked():
    _, record, _ = search([[50, 0], [50, 0], [50, 0], [50, 0]])  # value >= the k-th best: ties go on
    assert kept(record) == [True] * 4 and record["stopped"] == []
    _, record, _ = search([[30, 0], [20, 0], [10, 0]], reduction=4)  # 3 // 4 = 0: k = 1, the best so far
    assert kept(record) == [True, False, False]
    _, record, _ = search([[10, 0], [20, 0], [30, 0]], reduction=4)
    assert kept(record) == [True, True, True]
    rng = random.Random(0)
    for n, reduction in [(16, 4), (9, 3), (7, 2), (12, 4)]:  # and on any values: the rule in tiny_sweeps
        first = [rng.choice([10.0, 20.0, 30.0, 40.0, 50.0]) for _ in range(n)]
        _, record, _ = search([[v, 0.0] for v in first], reduction=reduction)
        assert kept(record) == optuna_keeps(first, reduction), (first, reduction)


def test_only_validation_reaches_the_pruner():
    """The fake's test accuracy ranks the points the other way round; the decisions follow validation."""
    outcomes, record, _ = search([[90, 0], [10, 0]])
    assert kept(record) == [True, False] and [
        p["val_accuracy"] for p in record["rung_results"][0]["points"]
    ] == [90, 10]
    assert "test_accuracy" not in str(record)


def test_without_optuna_asha_fails_at_once_and_the_grid_never_imports_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now fails
    args = ["sweep", "tune", *TINY_CLI, "--epochs", "1", "--no-progress", "--quiet", "--device", "cpu"]
    args += ["--method", "linear", "--lr", "0.05,0.01", "--seeds", "1"]
    assert main([*args, "--search", "asha", "--output", str(tmp_path / "asha")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "vprompt sweep: error: --search asha needs Optuna: pip install 'vprompt[search]'"
    assert not (tmp_path / "asha" / "tune").exists()
    with pytest.raises(RuntimeError, match=r"pip install 'vprompt\[search\]'"):
        sweep.suite(
            "vtab1k", dict(TINY_SWEEP, method="linear"), tmp_path / "suite", lrs=[0.1, 0.01], search="asha"
        )
    monkeypatch.setattr(
        executors, "train", FakeTrain(lambda c: {"val_accuracy": 50.0, "test_accuracy": 50.0})
    )
    assert main([*args, "--output", str(tmp_path / "grid")]) == 0  # the default never imports optuna
    assert len(list((tmp_path / "grid" / "tune").iterdir())) == 2
