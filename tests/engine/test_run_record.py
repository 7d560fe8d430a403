"""A readable run: one log line per epoch, and a config that records what made the run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tiny_runs import TINY

import vprompt
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


def test_no_progress_prints_nothing(tmp_path, capsys):
    vprompt.train(**dict(TINY, epochs=1), method="linear", output=tmp_path / "r")
    assert capsys.readouterr().out == ""
