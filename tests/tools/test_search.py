"""The early-stopping search's decisions are Optuna's: SuccessiveHalvingPruner's rule as it is (asked in an
order drawn from the seed, ties go on, small rungs keep at least one), only validation reaches it, stopped points are not
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
from vprompt.tools.search import Asha, arrival, halve


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


def asked(record: dict, rung: int = 0) -> list[float]:
    """The rung's validation accuracies in the order the pruner was asked."""
    return [p["val_accuracy"] for p in record["rung_results"][rung]["points"]]


def test_the_rung_decisions_are_optunas_in_an_order_drawn_from_the_seed():
    val = [[10 * (i + 1), 80 - 10 * i, 0, 0] for i in range(8)]  # rising in grid order, then falling
    outcomes, record, ran = search(val)
    assert record["engine"] == f"optuna {version('optuna')}" and record["pruner"] == "SuccessiveHalvingPruner"
    assert record["rungs"] == [1, 2]
    first = [p["run"] for p in record["rung_results"][0]["points"]]
    assert sorted(first) == [f"p{i}" for i in range(8)] and first != sorted(first)  # not the grid's order
    assert first == [f"p{i}" for i in arrival(list(range(8)), [Job("p0", "out", {})], 1)]
    for rung in (0, 1):  # Optuna's rule on the values in the order asked
        assert kept(record, rung) == optuna_keeps(asked(record, rung), 2)
    assert 1 <= sum(kept(record, 0)) < 8  # in grid order the rising values would all have gone on
    assert search(val)[1] == record  # the same order and decisions on a rerun
    stopped = {s["run"]: s for s in record["stopped"]}
    assert stopped and all(s["val_accuracy"] == val[int(r[1:])][s["epoch"] - 1] for r, s in stopped.items())
    for i, outcome in enumerate(outcomes):
        assert outcome.status == ("stopped" if f"p{i}" in stopped else "trained")
        # a stopped point never runs again after its rung; a survivor runs to its end once
        runs = [pause for name, pause in ran if name == f"p{i}"]
        want = [1, 2][: stopped[f"p{i}"]["rung"]] if f"p{i}" in stopped else [1, 2, None][: len(runs)]
        assert runs == want and (f"p{i}" in stopped or runs[-1] is None)


def test_the_order_is_drawn_from_the_seed_and_the_rung():
    jobs = [Job("p0", "out", {"seed": s}) for s in (0, 1)]
    orders = {(s, r): arrival(list(range(10)), [jobs[s]], r) for s in (0, 1) for r in (1, 2)}
    assert all(sorted(o) == list(range(10)) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 4
    assert arrival(list(range(10)), [jobs[0]], 1) == orders[0, 1]


def test_ties_go_on_and_any_values_follow_optunas_rule():
    _, record, _ = search([[50, 0], [50, 0], [50, 0], [50, 0]])  # value >= the k-th best: ties go on
    assert kept(record) == [True] * 4 and record["stopped"] == []
    rng = random.Random(0)
    for n, reduction in [(3, 4), (16, 4), (9, 3), (7, 2), (12, 4)]:  # small rungs too (3 // 4 = 0: k = 1)
        first = [rng.choice([10.0, 20.0, 30.0, 40.0, 50.0]) for _ in range(n)]
        _, record, _ = search([[v, 0.0] for v in first], reduction=reduction)
        assert kept(record) == optuna_keeps(asked(record), reduction), (first, reduction)
        assert kept(record)[0] and max(first) in [
            v for v, k in zip(asked(record), kept(record), strict=True) if k
        ]


def test_only_validation_reaches_the_pruner():
    """The fake's test accuracy ranks the points the other way round; the decisions follow validation."""
    val = [[90 - 10 * i, 0] for i in range(6)]
    _, record, _ = search(val)
    assert sorted(asked(record), reverse=True) == [v[0] for v in val]
    assert kept(record) == optuna_keeps(asked(record), 2)
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
