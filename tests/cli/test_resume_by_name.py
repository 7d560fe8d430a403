"""Runs you can move and resume by name: `train --resume RUN` reads the run's own config; data paths in
a run's config work from any working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image
from timm.scheduler import CosineLRScheduler

import vprompt
from tiny_runs import TINY, same_weights, strip_timing, weights
from vprompt.cli import main
from vprompt.engine.rundir import RunDir  # noqa: E402

TINY_ARGS = ["--backbone", TINY["backbone"], "--img-size", "32", "--data", TINY["data"], "--random-init"]
TINY_ARGS += ["--batch-size", "16", "--lr", "0.05", "--no-progress", "--method", "linear", "--epochs", "3"]


def test_resume_run_reads_the_runs_own_config(tmp_path, monkeypatch, capsys):
    assert main(["train", *TINY_ARGS, "--output", str(tmp_path / "whole")]) == 0
    original = CosineLRScheduler.step_update

    def crash(self, num_updates, metric=None):
        if num_updates == 4 + 2:  # two steps into epoch 2 (4 steps per epoch)
            raise KeyboardInterrupt
        return original(self, num_updates, metric)

    monkeypatch.setattr(CosineLRScheduler, "step_update", crash)
    cut = tmp_path / "cut"
    capsys.readouterr()
    assert main(["train", *TINY_ARGS, "--output", str(cut)]) == 130
    err = capsys.readouterr().err
    assert err == (
        "vprompt train: interrupted; the last finished epoch is kept; continue it with: "
        f"vprompt train --resume {cut}\n"
    )
    assert RunDir(cut).load_checkpoint()["progress"]["epoch"] == 1
    monkeypatch.setattr(CosineLRScheduler, "step_update", original)
    monkeypatch.chdir(tmp_path)  # another working directory, and no other option
    assert main(["train", "--resume", "cut", "--workers", "0"]) == 0
    assert "run written to cut" in capsys.readouterr().out
    same_weights(weights(cut), weights(tmp_path / "whole"))
    assert strip_timing(RunDir(cut).read_metrics()) == strip_timing(RunDir(tmp_path / "whole").read_metrics())


def test_resume_run_refuses_changed_options_and_another_output(tmp_path, capsys):
    run = tmp_path / "r"
    vprompt.train(**dict(TINY, method="linear", epochs=1), output=run)
    assert main(["train", "--resume", "--output", str(run)]) == 0  # the older spelling reads it too
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "holds a finished run with other options (lr: 0.05 → 0.5)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--output", str(tmp_path / "other")]) == 2
    assert "name different runs" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "is not a vprompt run directory" in capsys.readouterr().err


def photos(base: Path) -> None:
    """A torchvision ImageFolder-style tree with train/ and test/ split folders, two classes."""
    for split, n in (("train", 10), ("test", 4)):
        for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            folder = base / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), tuple(min(255, v + 5 * i) for v in colour)).save(
                    folder / f"{i}.png"
                )


def test_a_relative_folder_path_works_from_another_directory(tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    photos(work / "photos")
    monkeypatch.chdir(work)
    options = dict(TINY, data="folder:photos", method="linear", epochs=1, batch_size=8)
    summary = vprompt.train(**options, output="run")
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert saved["data"] == "folder:photos"  # as given, and where it is:
    assert saved["resolved"]["data_location"] == {"data": f"folder:{work / 'photos'}", "root": None}
    monkeypatch.chdir(elsewhere)
    assert vprompt.evaluate_run(work / "run", split="test")["images"] == 8
    assert vprompt.evaluate_run(work / "run", split="val")["accuracy"] == summary["val_accuracy"]
    capsys.readouterr()
    assert main(["eval", str(work / "run")]) == 0
    assert '"images": 8' in capsys.readouterr().out


def test_a_relative_root_is_recorded_absolute(tmp_path, monkeypatch):
    photos(tmp_path / "data" / "photos")
    monkeypatch.chdir(tmp_path)
    vprompt.train(**dict(TINY, data="folder:photos", root="data", method="linear", epochs=1), output="run")
    location = RunDir(tmp_path / "run").read_config()["resolved"]["data_location"]
    assert location == {"data": "folder:photos", "root": str(tmp_path / "data")}
    monkeypatch.chdir(tmp_path / "data")
    assert vprompt.evaluate_run(tmp_path / "run", split="test")["images"] == 8


@pytest.mark.parametrize("given", [["--resume"], []])
def test_a_bare_resume_still_needs_the_options(given, tmp_path, capsys):
    assert main(["train", *given, "--output", str(tmp_path / "r")]) == 2
    assert "--method is required" in capsys.readouterr().err
