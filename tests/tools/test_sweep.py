"""Sweeps: layer preference, tuning on validation, suites; reuse, resume and failure isolation."""

from __future__ import annotations

import json

import pytest
from tiny_sweeps import FakeTrain, one_thread

from fakes import VTAB_FULL, vtab_root, write_image
from tiny_runs import TINY_SWEEP as TINY
from vprompt.engine import trainer as trainer_module
from vprompt.engine.rundir import RunDir
from vprompt.tools import executors, sweep, tuning
from vprompt.tools.executors import Executor, Outcome
from vprompt.tools.tables import mean_std

QUIET = Executor(log=None)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def test_layers_trains_ap_at_each_site_and_writes_table_and_plot(tmp_path):
    result = sweep.layers({**TINY, "final": True}, tmp_path, sites=["block.5", "block.1"], executor=QUIET)
    rows = result["rows"]
    assert [r["site"] for r in rows] == ["block.1", "block.5"]  # in depth order
    assert [r["depth"] for r in rows] == [3, 7] and all(r["status"] == "trained" for r in rows)
    for r in rows:
        summary = RunDir(tmp_path / "layers" / "full" / r["site"]).read_summary()
        assert summary["method_options"] == {"site": r["site"], "shape": "full"}
        assert r["split"] == "test" and r["accuracy"] == summary["test_accuracy"]
        assert r["trainable_parameters_without_head"] == 5 * 192
    assert {p.name for p in tmp_path.iterdir()} >= {"layers-full.md", "layers-full.csv", "layers-full.png"}
    assert "| block.5 | 7 | test |" in (tmp_path / "layers-full.md").read_text()
    assert result["failures"] == [] and not (tmp_path / "failures.json").exists()


def test_layers_default_sites_are_embed_and_every_block(tmp_path, monkeypatch):
    fake = FakeTrain(lambda c: {"val_accuracy": 50.0})
    monkeypatch.setattr(executors, "train", fake)
    result = sweep.layers(TINY, tmp_path, shape="channel", executor=QUIET)
    assert [r["site"] for r in result["rows"]] == ["embed"] + [f"block.{i}" for i in range(12)]
    assert {c["method_options"]["shape"] for c in fake.calls} == {"channel"}
    assert (tmp_path / "layers" / "channel" / "block.11" / "summary.json").is_file()
    with pytest.raises(ValueError, match="no site block.99"):
        sweep.layers(TINY, tmp_path, sites=["block.99"], executor=QUIET)


def test_layers_sweeps_aap_through_the_same_sweep(tmp_path):
    config = {**TINY, "method_options": {"hidden": 2}}
    result = sweep.layers(config, tmp_path, sites=["block.2", "embed"], method="aap", executor=QUIET)
    assert [r["site"] for r in result["rows"]] == ["embed", "block.2"]
    for r in result["rows"]:
        summary = RunDir(tmp_path / "layers" / "aap-full" / r["site"]).read_summary()
        assert summary["method"] == "aap" and r["accuracy"] == summary["val_accuracy"]
        assert summary["method_options"] == {
            "site": r["site"],
            "shape": "full",
            "hidden": 2,
            "kernel": 3,
            "dropout": 0.1,
        }
        # ViT-Tiny (D = 192) at 32 px: 5 tokens; AP's 5×192 plus the 3×3 kernel and 2·192·2 projector
        assert r["trainable_parameters_without_head"] == 5 * 192 + 9 + 2 * 192 * 2
    assert {p.name for p in tmp_path.iterdir()} >= {"layers-aap-full.md", "layers-aap-full.png"}
    assert "# AAP layer preference (shape full)" in (tmp_path / "layers-aap-full.md").read_text()
    with pytest.raises(ValueError, match=r"moves a site method \(ap, aap\), not 'vapt'"):
        sweep.layers(TINY, tmp_path, method="vapt", executor=QUIET)


def test_interrupted_sweep_continues_where_it_stopped(tmp_path, monkeypatch):
    config = {**TINY, "epochs": 2}
    sites = ["block.3", "block.4", "block.5"]
    saves = []
    original_save = RunDir.save_checkpoint

    def interrupt_on_third_save(self, state):  # run 1: epochs 1, 2; run 2: epoch 1, then "Ctrl-C"
        original_save(self, state)
        saves.append(self.path.name)
        if len(saves) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "save_checkpoint", interrupt_on_third_save)
    with pytest.raises(KeyboardInterrupt):
        sweep.layers(config, tmp_path, sites=sites, executor=QUIET)
    runs = [RunDir(tmp_path / "layers" / "full" / s) for s in sites]
    assert runs[0].finished and runs[1].has_checkpoint() and not runs[1].finished
    assert not runs[2].path.exists()
    first_summary = (runs[0] / "summary.json").read_text()

    monkeypatch.setattr(RunDir, "save_checkpoint", original_save)
    trained, resumed = [], []
    real_train, real_load = executors.train, trainer_module.Trainer.load_state
    monkeypatch.setattr(
        executors,
        "train",
        lambda c, output, resume: trained.append(output) or real_train(c, output=output, resume=resume),
    )
    monkeypatch.setattr(
        trainer_module.Trainer, "load_state", lambda self, s: resumed.append(1) or real_load(self, s)
    )
    result = sweep.layers(config, tmp_path, sites=sites, executor=QUIET)
    assert [r["status"] for r in result["rows"]] == ["reused", "trained", "trained"]
    # run 1 is not redone, run 2 resumes from its checkpoint, run 3 starts
    assert trained == [str(runs[1].path), str(runs[2].path)] and resumed == [1]
    assert (runs[0] / "summary.json").read_text() == first_summary
    assert [m["epoch"] for m in runs[1].read_metrics()] == [1, 2]


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, capsys):
    # lr -1 is refused by the engine: that grid point fails, the sweep still tunes and runs the final fit
    logged = []
    config = {**TINY, "method": "ap", "site": "block.5"}
    result = sweep.tune(
        config, tmp_path, lrs=[-1.0, 0.05], wds=[0.0], seeds=1, executor=Executor(log=logged.append)
    )
    assert [g["status"] for g in result["grid"]] == ["failed", "trained"]
    assert result["chosen"]["lr"] == 0.05 and result["final"][0]["status"] == "trained"
    assert any("FAILED" in line and "lr-1-wd0" in line for line in logged)
    error = (tmp_path / "tune" / "lr-1-wd0" / "error.txt").read_text()
    assert "Traceback" in error and "lr must be positive" in error
    failures = json.loads((tmp_path / "failures.json").read_text())
    assert [f["run"] for f in failures] == ["tune/lr-1-wd0"] and "lr must be positive" in failures[0]["error"]
    # again: the failed run is retried (and fails again), the finished ones are reused
    again = sweep.tune(config, tmp_path, lrs=[-1.0, 0.05], wds=[0.0], seeds=1, executor=QUIET)
    assert [g["status"] for g in again["grid"]] == ["failed", "reused"]
    assert again["final"][0]["status"] == "reused" and again["test_accuracy"] == result["test_accuracy"]


def test_a_finished_run_with_other_options_is_not_passed_off_as_the_requested_one(tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "train", FakeTrain(lambda c: {"val_accuracy": 50.0}))
    sweep.layers(TINY, tmp_path, sites=["block.1"], executor=QUIET)
    results = {p: p.read_bytes() for p in tmp_path.glob("layers-*")}
    with pytest.raises(
        ValueError, match=r"finished runs made with other options: .*epochs: 1 → 3.*nothing was run"
    ):
        sweep.layers({**TINY, "epochs": 3}, tmp_path, sites=["block.1"], executor=QUIET)
    assert results and all(p.read_bytes() == data for p, data in results.items())  # good results kept
    assert not (tmp_path / "layers" / "full" / "block.1" / "error.txt").exists()  # the run is untouched


def test_a_tune_rerun_with_other_options_keeps_its_good_result(tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "train", FakeTrain(planted))
    base = {**TINY, "method": "linear"}
    sweep.tune(base, tmp_path, lrs=[0.1], wds=[0.0], seeds=1, executor=QUIET)
    before = (tmp_path / "result.json").read_bytes(), (tmp_path / "result.md").read_bytes()
    with pytest.raises(ValueError, match="other options"):
        sweep.tune({**base, "epochs": 2}, tmp_path, lrs=[0.1], wds=[0.0], seeds=1, executor=QUIET)
    assert ((tmp_path / "result.json").read_bytes(), (tmp_path / "result.md").read_bytes()) == before


def test_a_failure_whose_message_is_not_utf8_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    bad_name = "bild-\udcff.jpg"  # a file name that is not valid UTF-8 (surrogate-escaped by the OS layer)

    def train(config, output, resume=False):
        if config["lr"] == 0.1:
            raise ValueError(f"/data/{bad_name}: cannot decode image")
        return FakeTrain(lambda c: {"val_accuracy": 50.0, "val_loss": 1.0, "test_accuracy": 40.0})(
            config, output, resume
        )

    monkeypatch.setattr(executors, "train", train)
    base = {**TINY, "method": "linear"}
    result = sweep.tune(base, tmp_path, lrs=[0.1, 0.05], wds=[0.0], seeds=1, executor=QUIET)
    assert [g["status"] for g in result["grid"]] == ["failed", "trained"]
    failures = json.loads((tmp_path / "failures.json").read_text())
    assert "cannot decode image" in failures[0]["error"]
    assert "cannot decode image" in (tmp_path / "tune" / "lr0.1-wd0" / "error.txt").read_text()


def planted(config):
    """lr 0.1 is worse on validation but would win on test; the final runs score 70 + seed."""
    if config["final"]:
        return {"test_accuracy": 70.0 + config["seed"]}
    if config["lr"] == 0.1:
        return {"val_accuracy": 60.0, "val_loss": 1.0, "test_accuracy": 99.0}
    return {"val_accuracy": 80.0, "val_loss": 2.0, "test_accuracy": 10.0}


def test_tune_picks_by_validation_even_when_test_disagrees(tmp_path, monkeypatch):
    fake = FakeTrain(planted)
    monkeypatch.setattr(executors, "train", fake)
    result = sweep.tune(
        {**TINY, "method": "ap", "site": "block.5"},
        tmp_path,
        lrs=[0.1, 0.01],
        wds=[0.0, 1e-4],
        seeds=3,
        executor=QUIET,
    )
    chosen = result["chosen"]
    assert (chosen["lr"], chosen["weight_decay"]) == (0.01, 0.0)  # val ties between the wds: lower loss
    grid, finals = fake.calls[:4], fake.calls[4:]
    assert all(not c["final"] for c in grid) and {(c["lr"], c["weight_decay"]) for c in grid} == {
        (0.1, 0.0),
        (0.1, 1e-4),
        (0.01, 0.0),
        (0.01, 1e-4),
    }
    assert [(c["final"], c["lr"], c["weight_decay"], c["seed"], c["selection"]) for c in finals] == [
        (True, 0.01, 0.0, s, "final") for s in range(3)
    ]
    assert all(c["method_options"] == {"site": "block.5"} for c in fake.calls)
    mean, std = mean_std([70.0, 71.0, 72.0])
    assert result["test_accuracy"] == {"mean": mean, "std": std, "n": 3} and std == pytest.approx(1.0)
    assert json.loads((tmp_path / "result.json").read_text())["chosen"]["lr"] == 0.01
    text = (tmp_path / "result.md").read_text()
    assert "71.00 ± 1.00 (n=3)" in text and "lr=0.01" in text
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["seed0", "seed1", "seed2"]


def test_choose_breaks_ties_by_val_loss_then_grid_order():
    def point(lr, acc, loss):
        return (lr, 0.0), Outcome(
            "x", "x", "trained", {"val_accuracy": acc, "val_loss": loss, "test_accuracy": 100}
        )

    failed = ((9.0, 0.0), Outcome("f", "f", "failed", error="boom"))
    assert tuning.choose([point(1, 50, 1.0), point(2, 70, 3.0), point(3, 70, 2.0), failed])["lr"] == 3
    assert tuning.choose([point(1, 70, 2.0), point(2, 70, 2.0)])["lr"] == 1
    assert tuning.choose([failed]) is None


def test_suite_tunes_every_dataset_of_the_family(tmp_path, monkeypatch):
    fake = FakeTrain(planted)
    monkeypatch.setattr(executors, "train", fake)
    tasks = ["eurosat", "svhn", "dtd"]
    config = {**TINY, "method": "linear", "root": str(tmp_path / "data")}
    result = sweep.suite(
        "vtab1k", config, tmp_path / "out", datasets=tasks, lrs=[0.1, 0.01], seeds=2, executor=QUIET
    )
    assert result["tuned"] and {c["data"] for c in fake.calls} == {f"vtab1k:{t}" for t in tasks}
    assert len(fake.calls) == 3 * (2 + 2)
    for t in tasks:
        r = result["datasets"][t]
        assert r["chosen"]["lr"] == 0.01 and r["test_accuracy"]["mean"] == 70.5
        assert (tmp_path / "out" / t / "final" / "seed1" / "summary.json").is_file()
    # 3 of VTAB-1k's 19 tasks: no mean of the suite, none of a group (2 of the 7 natural tasks)
    means = result["means"]
    assert means["all"] == {"label": "mean of 19 tasks", "mean": None, "have": 3, "of": 19, "complete": False}
    assert means["natural"] == {"label": "natural mean", "mean": None, "have": 2, "of": 7, "complete": False}
    assert means["groups"]["mean"] is None
    text = (tmp_path / "out" / "suite.md").read_text()
    assert "| eurosat | 0.01 | 0 | 70.50 ± 0.71 | 2 |" in text
    assert "| **mean of 19 tasks** | – | – | incomplete (3 of 19) |" in text
    assert "| **natural mean** | – | – | incomplete (2 of 7) |" in text
    with pytest.raises(ValueError, match="vtab1k has no dataset nope"):
        sweep.suite("vtab1k", config, tmp_path / "out", datasets=["nope"], executor=QUIET)


def test_suite_with_fixed_hyperparameters_on_real_vtab_files(tmp_path):
    root = vtab_root(tmp_path / "data", sizes=VTAB_FULL, images=10, image_size=8)
    config = {**TINY, "method": "linear", "root": str(root), "train_size": 30, "eval_size": 20}
    result = sweep.suite(
        "vtab1k", config, tmp_path / "out", datasets=["eurosat", "svhn"], seeds=1, executor=QUIET
    )
    eurosat, svhn = result["datasets"]["eurosat"], result["datasets"]["svhn"]
    assert not result["tuned"] and eurosat["grid"] == [] and eurosat["chosen"]["lr"] == 0.05
    summary = RunDir(tmp_path / "out" / "eurosat" / "final" / "seed0").read_summary()
    assert summary["final"] and summary["splits"]["train"] == "trainval" and summary["sizes"]["train"] == 30
    assert eurosat["test_accuracy"]["mean"] == summary["test_accuracy"]
    # svhn has no files: its run fails, eurosat's does not
    assert svhn["test_accuracy"] is None and [f["run"] for f in result["failures"]] == ["svhn/final/seed0"]
    assert result["means"]["all"]["complete"] is False


def test_tuning_runs_never_evaluate_the_test_split(tmp_path):
    plan = tuning.Plan({**TINY, "test_split": "test", "method_options": {}}, tmp_path, [0.1], [0.0], 1)
    assert [job.config["test_split"] for job in plan.grid_jobs()] == ["none"]


def test_tune_stops_early_on_validation_and_the_final_runs_train_every_epoch(tmp_path, monkeypatch):
    """--early-stop watches the tuning runs' validation; the final runs have none, so they do not stop."""
    fake = FakeTrain(planted)
    monkeypatch.setattr(executors, "train", fake)
    base = {**TINY, "method": "ap", "site": "block.5", "early_stop": 2, "early_stop_metric": "val_loss"}
    sweep.tune(base, tmp_path, lrs=[0.1], wds=[0.0], seeds=2, executor=QUIET)
    grid, finals = fake.calls[:1], fake.calls[1:]
    assert [(c["early_stop"], c["early_stop_metric"]) for c in grid] == [(2, "val_loss")]
    assert [(c["final"], c["early_stop"], c["early_stop_metric"]) for c in finals] == [
        (True, None, "val_accuracy")
    ] * 2


def test_a_sweep_whose_final_runs_cannot_start_trains_nothing(tmp_path, monkeypatch):
    """A ``folder:`` with ``train/`` and ``val/`` only has no final split: refused before the grid."""
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            for i in range(3):
                write_image(tmp_path / "photos" / split / label / f"{i}.png", seed=i)
    fake = FakeTrain(lambda c: {"val_accuracy": 50.0})
    monkeypatch.setattr(executors, "train", fake)
    config = dict(TINY, data=f"folder:{tmp_path / 'photos'}", method="linear")
    with pytest.raises(ValueError, match=r"no split 'trainval'"):
        sweep.tune(config, tmp_path / "out", lrs=[0.1, 0.01], wds=[0.0], seeds=1)
    assert fake.calls == [] and not (tmp_path / "out" / "tune").exists()
    # train/ and test/ (val held out of train, trainval all of train): the final runs can start
    for split, n in (("train", 12), ("test", 2)):
        for label in ("cat", "dog"):
            for i in range(n):
                write_image(tmp_path / "held" / split / label / f"{i}.png", seed=i)
    sweep.check_base(sweep.base_config(dict(config, data=f"folder:{tmp_path / 'held'}")), final=True)
