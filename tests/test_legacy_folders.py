"""Folders written by an earlier vprompt (``tests/fixtures/legacy/``, see its README) still load, evaluate,
resume and are reused by a sweep: the saved options and files keep their names and meaning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

import vprompt
from tiny_runs import same_weights, strip_timing, weights
from vprompt.cli import main
from vprompt.engine.rundir import RunDir

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
TINY_ARGS = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--img-size", "32"]
TINY_ARGS += ["--data", "synthetic:4x32", "--batch-size", "16", "--device", "cpu", "--no-progress", "--quiet"]


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY / name, tmp_path / name))


def test_a_legacy_run_loads_and_evaluates_as_it_recorded(tmp_path, capsys):
    run = copy("run", tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    model = vprompt.load_run(run)
    assert model.class_names == [f"class_{i}" for i in range(4)]
    assert model.preprocessing == {"protocol": "vp", "preprocess": "protocol"}
    same_weights(model.trainable_state_dict(), weights(run))
    result = vprompt.evaluate_run(run, split="val", device="cpu")
    assert result["accuracy"] == summary["val_accuracy"]
    assert main(["eval", str(run), "--split", "val", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == summary["val_accuracy"]
    assert vprompt.engine.run.run_config(run).method_options == {"site": "block.5", "shape": "channel"}


def test_a_legacy_peft_adapter_loads(tmp_path):
    folder = copy("adapter", tmp_path)
    model = vprompt.TunedModel.from_pretrained(folder)
    assert model.method.config.r == 1 and model.method.target_names == ["blocks.11.attn.qkv"]
    same_weights(model.trainable_state_dict(), load_file(str(folder / "vprompt_model.safetensors")))


def test_a_legacy_interrupted_run_resumes_to_the_uninterrupted_runs_weights(tmp_path, capsys):
    cut = copy("interrupted", tmp_path)
    assert RunDir(cut).load_checkpoint()["progress"]["epoch"] == 1
    assert main(["train", "--resume", str(cut), "--lr", "0.1"]) == 2  # another option: refused
    assert "cannot resume: the config differs from the interrupted run's (lr: 0.05 → 0.1)" in (
        capsys.readouterr().err
    )
    assert main(["train", "--resume", str(cut)]) == 0
    whole = LEGACY / "run"
    same_weights(weights(cut), weights(whole))
    metrics = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert strip_timing(metrics) == strip_timing(expected)


def test_a_legacy_finished_run_refuses_other_options_and_accepts_its_own(tmp_path, capsys):
    run = copy("run", tmp_path)
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "holds a finished run with other options (lr: 0.05 → 0.1)" in capsys.readouterr().err
    summary = (run / "summary.json").read_text()
    assert main(["train", "--resume", str(run), "--cache", "off", "--workers", "0"]) == 0
    assert (run / "summary.json").read_text() == summary  # returned as it is, not trained again


def test_a_legacy_sweep_reuses_its_runs(tmp_path):
    sweep = copy("sweep", tmp_path)
    args = ["sweep", "tune", *TINY_ARGS, "--method", "linear", "--epochs", "1", "--lr", "0.05"]
    assert main([*args, "--weight-decay", "0", "--seeds", "1", "--output", str(sweep)]) == 0
    result = json.loads((sweep / "result.json").read_text())
    assert [p["status"] for p in result["grid"] + result["final"]] == ["reused", "reused"]
    assert result["chosen"]["lr"] == 0.05


@pytest.mark.parametrize("name", ["run", "interrupted", "sweep/final/seed0"])
def test_a_legacy_config_reads_back_as_the_same_options(name):
    saved = RunDir(LEGACY / name).read_config()
    config = vprompt.engine.run.run_config(LEGACY / name)
    flat = vprompt.engine.config.to_dict(config)
    assert {k: v for k, v in saved.items() if k not in ("resolved", "data", "root")} == {
        k: v for k, v in flat.items() if k in saved and k not in ("data", "root")
    }


@pytest.mark.parametrize("name", ["run", "interrupted"])
def test_finished_and_interrupted_runs_accept_the_same_changes(name, tmp_path, capsys):
    """Every option that does not change a result (``RESUME_FREE``, the one list) may differ when a run
    is resumed, finished or not; an option that does is refused either way."""
    from vprompt.engine.run import RESUME_FREE

    run = copy(name, tmp_path)
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert "epochs: 2 → 3" in capsys.readouterr().err
    free = {"cache": "off", "workers": "0", "device": "cpu", "log": "tensorboard", "root": str(tmp_path)}
    free |= {"details": True, "quiet": True, "progress": True}
    assert set(free) == RESUME_FREE - {"resolved"}
    flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in free.items()]
    assert main(["train", "--resume", str(run), *flags]) == 0
    assert RunDir(run).finished
