"""A readable run: one log line per epoch, and a config that records what made the run."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vprompt
from tiny_runs import TINY
from vprompt.engine.rundir import RunDir


def test_one_line_per_epoch_and_provenance(tmp_path, capsys):
    vprompt.train(**dict(TINY, progress=True), method="linear", output=tmp_path / "r")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == TINY["epochs"]
    pattern = (
        r"epoch [1-3]/3  train loss \d+\.\d{4} acc +\d+\.\d%  val acc +\d+\.\d% loss \d+\.\d{4}  "
        r"lr \S+  \d+ img/s  \d+\.\d s"
    )
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    metrics = RunDir(tmp_path / "r").read_metrics()
    assert lines[-1].startswith(f"epoch 3/3  train loss {metrics[-1]['train_loss']:.4f}")
    resolved = RunDir(tmp_path / "r").read_config()["resolved"]
    record = resolved["provenance"]
    assert record["vprompt"] == vprompt.__version__ and record["cwd"]
    repo = Path(vprompt.__file__).resolve().parents[2]
    if (repo / ".git").exists():  # running from a checkout: its commit is recorded
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert record["git_commit"] == head.stdout.strip() and isinstance(record["git_dirty"], bool)
    else:
        assert record["git_commit"] is None
    fingerprints = resolved["data_fingerprint"]
    assert set(fingerprints) == {"train", "val"} and fingerprints["train"]["items"] == 64
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprints["val"]["sha256"])


EPOCH_LINE = (
    r"epoch [12]/2  train loss \d+\.\d{4} acc +\d+\.\d%  val acc +\d+\.\d% loss \d+\.\d{4}  "
    r"lr \S+  \d+ img/s  \d+\.\d s"
)


def train_cli(output: Path, *options: str) -> int:
    from vprompt.cli import main

    args = ["train", "--backbone", TINY["backbone"], "--random-init", "--img-size", "32"]
    args += ["--data", TINY["data"], "--epochs", "2", "--batch-size", "16", "--lr", "0.05"]
    return main([*args, "--method", "linear", "--device", "cpu", "--output", str(output), *options])


@pytest.mark.parametrize("options", [[], ["--no-progress"]], ids=["default", "no-progress"])
def test_a_log_file_gets_one_line_per_epoch_and_no_bar(tmp_path, capsys, options):
    """Output that is not a terminal (capsys, as a file or a pipe): no bar whatever --progress says."""
    assert train_cli(tmp_path / "r", *options) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 4 and err == "", (out, err)
    assert all(re.fullmatch(EPOCH_LINE, line) for line in lines[:2]), lines
    assert [lines[0][:7], lines[1][:7]] == ["epoch 1", "epoch 2"]
    assert set(json.loads(lines[2])) >= {"val_accuracy", "train_seconds"}
    assert lines[3] == f"run written to {tmp_path / 'r'}"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_unless_no_progress(tmp_path, capsys, monkeypatch):
    for options, bar in (([], True), (["--no-progress"], False)):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert train_cli(tmp_path / str(bar), *options) == 0
        epochs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
        assert len(epochs) == 2  # the per-epoch lines stay
        assert ("batch/s" in terminal.getvalue() or "s/batch" in terminal.getvalue()) is bar


def test_quiet_prints_nothing_but_errors(tmp_path, capsys):
    assert train_cli(tmp_path / "r", "--quiet") == 0
    assert capsys.readouterr() == ("", "")
    assert RunDir(tmp_path / "r").finished
    assert train_cli(tmp_path / "bad", "--quiet", "--lr", "-1") == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "vprompt train: error: lr must be positive, got -1.0\n"
    vprompt.train(**dict(TINY, epochs=1, quiet=True), method="linear", output=tmp_path / "api")
    assert capsys.readouterr() == ("", "")
