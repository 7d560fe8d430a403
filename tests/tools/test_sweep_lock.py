"""One sweep per folder at a time: a second sweep into a folder in use is refused in one line before it
reads or runs anything; the lock dies with its process, so a sweep killed with kill -9 simply runs again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny_sweeps import FakeTrain

from tiny_runs import TINY_SWEEP as TINY
from vprompt.cli import main
from vprompt.engine.rundir import RunLocked, lock_folder
from vprompt.tools import executors, sweep

QUIET = executors.Executor(log=None)

#: holds the sweep folder's lock the way a running vprompt does, says so on stdout, then waits forever
HOLDER = """
import sys
from pathlib import Path
from vprompt.engine.rundir import lock_folder
lock = lock_folder(Path(sys.argv[1]), "sweep folder")
print("held", flush=True)
sys.stdin.read()
"""


def planted(config):
    if config["final"]:
        return {"test_accuracy": 60.0 + config["seed"]}
    return {"val_accuracy": 90.0 if config["lr"] == 0.01 else 50.0, "val_loss": 1.0}


@pytest.fixture
def fake(monkeypatch):
    fake = FakeTrain(planted)
    monkeypatch.setattr(executors, "train", fake)
    return fake


def tune(out):
    return sweep.tune({**TINY, "method": "linear"}, out, lrs=[0.01, 0.1], wds=[0.0], seeds=2, executor=QUIET)


def test_a_sweep_into_a_folder_another_process_uses_is_refused_and_runs_again_after_kill_9(fake, tmp_path):
    out = tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"  # the other process holds the folder now
        with pytest.raises(RunLocked) as caught:
            tune(out)
        assert str(caught.value) == (
            f"sweep folder {out} is in use by another vprompt process; wait for it or choose another --output"
        )
        assert fake.calls == [] and sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing ran
    finally:
        holder.kill()  # SIGKILL: its lock goes with it
        holder.wait()
    result = tune(out)
    assert json.loads((out / "result.json").read_text()) == tune(tmp_path / "alone") == result
    assert [c["lr"] for c in fake.calls[:2]] == [0.01, 0.1] and len(fake.calls) == 2 * (2 + 2)


@pytest.mark.parametrize(
    "start",
    [
        lambda out: sweep.layers(TINY, out, sites=["block.1"], executor=QUIET),
        tune,
        lambda out: sweep.suite("vtab1k", TINY, out, datasets=["eurosat"], executor=QUIET),
    ],
    ids=["layers", "tune", "suite"],
)
def test_every_sweep_takes_the_folders_lock(fake, tmp_path, start):
    held = lock_folder(tmp_path, "sweep folder")  # another open file: flock refuses it like another process
    try:
        with pytest.raises(RunLocked, match="is in use by another vprompt process"):
            start(tmp_path)
    finally:
        held.close()
    assert fake.calls == []


def test_the_cli_says_it_in_one_line(fake, tmp_path, capsys):
    held = lock_folder(tmp_path, "sweep folder")
    try:
        argv = [
            "sweep",
            "tune",
            "--backbone",
            "vit_tiny_patch16_224",
            "--data",
            "synthetic:4x32",
            "--method",
            "linear",
        ]
        assert main([*argv, "--random-init", "--img-size", "32", "--output", str(tmp_path)]) == 2
    finally:
        held.close()
    err = capsys.readouterr().err
    assert (
        err
        == f"vprompt sweep: error: sweep folder {tmp_path} is in use by another vprompt process; wait for "
        "it or choose another --output\n"
    )
