"""A sweep's savings: a diverged run stops and is never chosen, runs share one frozen-prefix cache, an
opt-in successive-halving search stops the worse points at rungs, and the compute is accounted. The
exact savings change no finished run and no choice (bit-equal weights and metrics)."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest
from tiny_sweeps import one_thread, optuna_keeps

import vprompt
from tiny_runs import TINY_CLI, TINY_SWEEP, same_weights, strip_timing, weights
from vprompt.cli import main
from vprompt.engine import trainer as trainer_module
from vprompt.engine.cache import SharedCaches, sharing
from vprompt.engine.rundir import RunDir
from vprompt.tools import sweep
from vprompt.tools.executors import Executor, Job, Outcome
from vprompt.tools.search import Asha, arrival
from vprompt.tools.tuning import choose

QUIET = Executor(log=None)
#: a linear probe (a cache at pre_logits) whose top learning rate overflows the logits in its 2nd step
PROBE = dict(TINY_SWEEP, method="linear", quiet=True)
LRS = [1e38, 0.05, 0.001]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def same_run(a, b) -> None:
    """Two finished runs are the same: bit-equal kept weights, the same metrics but for timing."""
    same_weights(weights(a), weights(b))
    assert strip_timing(RunDir(a).read_metrics()) == strip_timing(RunDir(b).read_metrics())


def test_a_diverged_run_stops_at_once_and_is_recorded(tmp_path):
    summary = vprompt.train(**dict(PROBE, lr=1e38, epochs=3), output=tmp_path / "r")
    assert summary["diverged"] == {"what": "training loss", "epoch": 1, "step": 2, "nonfinite": "stop"}
    assert summary["epochs_trained"] == 0 and summary["val_accuracy"] is None and summary["accuracy"] is None
    # 64 training images in batches of 16: the check after the epoch's 4th step stops it; 2 epochs skipped
    assert summary["compute"]["epochs_run"] == 1.0 and summary["compute"]["epochs_skipped_diverged"] == 2.0
    assert summary["compute"]["images_trained"] == 64 and summary["compute"]["images_evaluated"] == 0
    run = RunDir(tmp_path / "r")
    assert run.finished and not (run / "adapter").exists() and run.read_metrics() == []
    with pytest.raises(FileNotFoundError, match="diverged at epoch 1 step 2"):
        vprompt.load_run(run.path)
    going = vprompt.train(**dict(PROBE, lr=1e38, epochs=3, nonfinite="continue"), output=tmp_path / "c")
    assert going["diverged"]["step"] == 2 and going["epochs_trained"] == 3
    assert going["val_accuracy"] is not None and going["val_loss"] is None  # NaN is recorded as null
    assert [r["train_loss"] for r in RunDir(tmp_path / "c").read_metrics()] == [None, None, None]


def test_train_on_the_command_line_says_where_it_diverged(tmp_path, capsys):
    args = ["train", *TINY_CLI, "--method", "linear", "--epochs", "2", "--lr", "1e38", "--no-progress"]
    assert main([*args, "--device", "cpu", "--output", str(tmp_path / "r")]) == 1
    assert "the run diverged at epoch 1 step 2: the loss became NaN or infinite" in capsys.readouterr().out


def test_a_diverged_point_is_never_chosen_and_the_choice_and_other_runs_are_unchanged(tmp_path):
    """The top learning rate diverges: with the stop (default) it ends in its first epoch, without it
    (--nonfinite continue) it trains its whole schedule to a NaN model; either way it is recorded as
    diverged and not chosen, and every other run and the choice are the same."""
    results = {}
    for mode in ("stop", "continue"):
        config = dict(PROBE, epochs=2, nonfinite=mode)
        results[mode] = sweep.tune(config, tmp_path / mode, lrs=LRS, wds=[0.0], seeds=1, executor=QUIET)
    stop, going = results["stop"], results["continue"]
    assert stop["chosen"] == going["chosen"] and stop["chosen"]["lr"] == 0.05
    assert [g["status"] for g in stop["grid"]] == ["diverged at epoch 1 step 2", "trained", "trained"]
    assert [g["status"] for g in going["grid"]] == ["diverged at epoch 1 step 2", "trained", "trained"]
    assert going["grid"][0]["val_accuracy"] is not None and stop["grid"][0]["val_accuracy"] is None
    for run in ("tune/lr0.05-wd0", "tune/lr0.001-wd0", "final/seed0"):
        same_run(tmp_path / "stop" / run, tmp_path / "continue" / run)
    assert stop["test_accuracy"] == going["test_accuracy"]
    assert stop["compute"]["saved"]["epochs_skipped_diverged"] == 1.0  # of 2 epochs, 1 not trained
    assert going["compute"]["saved"]["epochs_skipped_diverged"] == 0.0
    assert (
        "| 1e+38 | 0 | – | – | diverged at epoch 1 step 2 |  |"
        in (tmp_path / "stop" / "result.md").read_text()
    )
    # a rerun reuses the diverged run as it is: recorded, not a failure to retry
    again = sweep.tune(dict(PROBE, epochs=2), tmp_path / "stop", lrs=LRS, wds=[0.0], seeds=1, executor=QUIET)
    assert again["grid"][0]["status"] == "diverged at epoch 1 step 2" and again["failures"] == []


def test_the_rule_passes_over_a_diverged_run_whatever_its_validation_accuracy():
    def outcome(accuracy, diverged=None, status="trained"):
        summary = {"val_accuracy": accuracy, "val_loss": 1.0, "diverged": diverged}
        return Outcome("x", "x", status, summary)

    nan_model = outcome(99.0, {"what": "training loss", "epoch": 1, "step": 1})
    choice = choose([((1.0, 0.0), nan_model), ((0.1, 0.0), outcome(40.0))])
    assert choice["lr"] == 0.1
    assert choose([((1.0, 0.0), nan_model)]) is None
    assert choose([((1.0, 0.0), outcome(99.0, status="stopped")), ((0.1, 0.0), outcome(40.0))])["lr"] == 0.1


def count_builds(monkeypatch) -> list[int]:
    built: list[int] = []
    original = trainer_module.build_cache

    def counting(model, site, dataset, *args, **kwargs):
        built.append(len(dataset))
        return original(model, site, dataset, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "build_cache", counting)
    return built


@pytest.mark.parametrize(
    ("method", "options"), [("linear", {}), ("ap", {"site": "block.9"})], ids=["linear", "ap-block.9"]
)
def test_a_sweep_builds_each_cache_once_and_its_runs_are_bit_equal(tmp_path, monkeypatch, method, options):
    built = count_builds(monkeypatch)
    config = dict(PROBE, method=method, method_options=options, epochs=2)
    lrs, seeds = [0.05, 0.01, 0.001], [0, 1]
    shared = sweep.tune(config, tmp_path / "shared", lrs=lrs, wds=[0.0], seeds=seeds, executor=QUIET)
    # tuning: one train (64) and one val (16) cache for the 3 points; final: one trainval (80) cache per
    # seed (a random-init backbone is drawn with the run's seed: other frozen weights, another cache)
    assert sorted(built) == [16, 64, 80, 80]
    built.clear()
    alone = Executor(log=None, share_caches=False)
    own = sweep.tune(config, tmp_path / "own", lrs=lrs, wds=[0.0], seeds=seeds, executor=alone)
    assert sorted(built) == [16] * 3 + [64] * 3 + [80] * 2
    assert shared["chosen"] == own["chosen"] and shared["test_accuracy"] == own["test_accuracy"]
    for run in [f"tune/lr{lr:g}-wd0" for lr in lrs] + ["final/seed0", "final/seed1"]:
        same_run(tmp_path / "shared" / run, tmp_path / "own" / run)
        mine = RunDir(tmp_path / "own" / run).read_summary()
        theirs = RunDir(tmp_path / "shared" / run).read_summary()
        for key in ("accuracy", "val_accuracy", "val_loss", "test_accuracy", "test_loss"):
            assert mine.get(key) == theirs.get(key), (run, key)
    assert (
        shared["compute"]["saved"]["cache_builds_saved"] == 4
        and shared["compute"]["runs"]["caches_built"] == 4
    )
    assert shared["compute"]["saved"]["cache_images_saved"] == 2 * (64 + 16)
    reused = RunDir(tmp_path / "shared" / "tune/lr0.01-wd0").read_summary()["cache"]
    assert reused["shared"] == "reused: built by another run of the sweep" and reused["build_seconds"] == 0.0


def test_runs_that_differ_before_the_site_build_their_own_cache(tmp_path, monkeypatch):
    built = count_builds(monkeypatch)
    with sharing(SharedCaches()):
        for name, changes in {
            "a": {},
            "seed": {"seed": 1},
            "site": {"method_options": {"site": "block.8"}},
        }.items():
            run = dict(PROBE, method="ap", method_options={"site": "block.9"}, epochs=1) | changes
            vprompt.train(**run, output=tmp_path / name)
        vprompt.train(
            **dict(PROBE, method="ap", method_options={"site": "block.9"}, epochs=1), output=tmp_path / "b"
        )
    # another seed: another random-init backbone; another site: other activations; "b" reuses "a"'s
    assert built == [64, 64, 64]


def test_caches_shared_on_disk_by_separate_processes_give_the_same_run(tmp_path, monkeypatch):
    """Each Ray task opens the sweep folder's store anew: the first builds and writes the cache, the
    next reads it back (memory-mapped, read-only) and trains bit for bit the same."""
    built = count_builds(monkeypatch)
    config = dict(PROBE, method="ap", method_options={"site": "block.9"}, epochs=2)
    for name in ("first", "second"):
        with sharing(SharedCaches(tmp_path / "caches")):
            vprompt.train(**config, output=tmp_path / name)
    assert sorted(built) == [16, 64]  # built by the first only
    assert len(list((tmp_path / "caches").glob("*/meta.json"))) == 2
    vprompt.train(**config, output=tmp_path / "own")
    same_run(tmp_path / "second", tmp_path / "own")
    same_run(tmp_path / "first", tmp_path / "own")
    assert RunDir(tmp_path / "second").read_summary()["cache"]["storage"] == "disk (shared)"


def test_asha_stops_points_where_optuna_says_and_its_survivors_equal_the_full_grid_runs(tmp_path):
    config = dict(PROBE, epochs=4)
    lrs = [0.05, 0.01, 0.002, 0.0005]
    full = sweep.tune(config, tmp_path / "grid", lrs=lrs, wds=[0.0], seeds=1, executor=QUIET)
    asha = sweep.tune(
        config, tmp_path / "asha", lrs=lrs, wds=[0.0], seeds=1, executor=QUIET, search=Asha(1, 2)
    )
    search = asha["search"]
    assert search["rungs"] == [1, 2] and search["grace"] == 1 and search["reduction"] == 2
    assert search["engine"] == f"optuna {version('optuna')}" and search["pruner"] == "SuccessiveHalvingPruner"
    first = search["rung_results"][0]
    assert first["epoch"] == 1 and sorted(p["run"] for p in first["points"]) == sorted(
        g["run"] for g in full["grid"]
    )
    for p in first["points"]:  # the rung's figures are the full grid's own epoch-1 validation
        row = RunDir(tmp_path / "grid" / p["run"]).read_metrics()[0]
        assert p["val_accuracy"] == row["val_accuracy"]
    for rung in search["rung_results"]:  # Optuna's rule, in the order asked
        assert [p["kept"] for p in rung["points"]] == optuna_keeps(
            [p["val_accuracy"] for p in rung["points"]], 2
        )
    stopped = {s["run"]: s for s in search["stopped"]}
    assert stopped and {s["epochs_skipped"] for s in stopped.values()} <= {3, 2}
    for name, stop in stopped.items():  # a stopped point keeps its checkpoint and metrics to its rung
        run = RunDir(tmp_path / "asha" / name)
        assert not run.finished and len(run.read_metrics()) == stop["epoch"]
        status = next(g["status"] for g in asha["grid"] if g["run"] == name)
        assert status == f"stopped at rung {stop['rung']} (epoch {stop['epoch']})"
    survivors = [g["run"] for g in asha["grid"] if g["status"] == "trained"]
    assert survivors and len(survivors) + len(stopped) == len(lrs)
    for survivor in survivors:  # paused at each rung and resumed = trained whole, bit for bit
        same_run(tmp_path / "asha" / survivor, tmp_path / "grid" / survivor)
    best = choose(
        [
            ((g["lr"], 0.0), Outcome(g["run"], "", g["status"], g))
            for g in full["grid"]
            if g["run"] in survivors
        ]
    )
    assert asha["chosen"]["lr"] == best["lr"] and asha["chosen"]["val_accuracy"] == best["val_accuracy"]
    saved = asha["compute"]["saved"]
    assert saved["epochs_skipped_search"] == sum(s["epochs_skipped"] for s in stopped.values())
    assert saved["images_trained_saved"] == 64 * saved["epochs_skipped_search"]
    md = (tmp_path / "asha" / "result.md").read_text()
    assert "Search: asha (grace 1 epochs, reduction 2, rungs at epochs [1, 2]; decided by optuna " in md
    # run again: everything is read back, and the search decides the same
    again = sweep.tune(
        config, tmp_path / "asha", lrs=lrs, wds=[0.0], seeds=1, executor=QUIET, search=Asha(1, 2)
    )
    assert again["search"]["stopped"] == search["stopped"] and again["chosen"] == asha["chosen"]


def test_asha_needs_validation_at_its_rungs(tmp_path):
    with pytest.raises(ValueError, match=r"validates none at epoch 1; use --eval-every 1"):
        sweep.tune(dict(PROBE, epochs=4, eval_every=2), tmp_path, lrs=[0.1, 0.01], seeds=1, search="asha")
    with pytest.raises(ValueError, match="unknown search 'hyperband'; choose one of: grid, asha"):
        sweep.tune(PROBE, tmp_path, lrs=[0.1, 0.01], seeds=1, search="hyperband")
    with pytest.raises(ValueError, match="--asha-reduction must be at least 2"):
        Asha(1, 1)
    assert Asha(1, 4).rungs(20) == [1, 4, 16] and Asha(2, 3).rungs(18) == [2, 6] and Asha(5).rungs(5) == []


def test_the_accounting_sums_the_runs(tmp_path):
    result = sweep.tune(dict(PROBE, epochs=2), tmp_path, lrs=LRS, wds=[0.0], seeds=1, executor=QUIET)
    totals = json.loads((tmp_path / "compute.json").read_text())
    assert totals == result["compute"]
    runs = [RunDir(tmp_path / g["run"]).read_summary()["compute"] for g in result["grid"]]
    runs.append(RunDir(tmp_path / "final/seed0").read_summary()["compute"])
    for key in ("images_trained", "images_evaluated", "cache_images"):
        assert totals["spent"][key] == sum(r[key] for r in runs)
    assert totals["spent"]["run_seconds"] == pytest.approx(sum(r["seconds"] for r in runs))
    # two points train 2 epochs of 64, the diverged one 1 epoch; the final run 2 epochs of 80
    assert totals["spent"]["images_trained"] == 2 * 2 * 64 + 64 + 2 * 80
    # validation after each epoch and once more after selection (16 each); the final run tests once
    tested = RunDir(tmp_path / "final/seed0").read_summary()["sizes"]["test"]
    assert totals["spent"]["images_evaluated"] == 2 * 3 * 16 + tested
    assert totals["saved"]["images_trained_saved"] == 64 and totals["runs"]["diverged"] == 1


def test_sweep_tune_search_asha_on_the_command_line(tmp_path, capsys):
    args = ["sweep", "tune", *TINY_CLI, "--method", "linear", "--epochs", "2", "--no-progress", "--quiet"]
    # seed 0 asks the second grid point (lr 0.05, the better at epoch 1) first: lr 0.0001 then stops
    assert arrival([0, 1], [Job("p", "out", {"seed": 0})], 1) == [1, 0]
    args += ["--device", "cpu", "--lr", "0.0001,0.05", "--seeds", "1", "--search", "asha"]
    assert main([*args, "--asha-reduction", "2", "--output", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "stopped at rung 1 (epoch 1)" in out and "compute: " in out and "epochs (divergence)" in out
    assert json.loads((tmp_path / "s" / "result.json").read_text())["search"]["stopped"][0]["epoch"] == 1
