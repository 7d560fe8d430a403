"""A killed run resumes and ends exactly like an uninterrupted one; a NaN loss stops a run cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from timm.scheduler import CosineLRScheduler

import vprompt
from numerics import assert_trained_weights_close
from tiny_runs import TINY, same_weights, strip_timing, weights
from vprompt.engine import NonFiniteLossError
from vprompt.engine import trainer as trainer_module
from vprompt.engine.rundir import RunDir

# prompt dropout (RNG in the model) and random crops + flips (RNG in the data): both must resume exactly
NOISY = dict(TINY, method="vpt-deep", method_options={"num_prompts": 2}, protocol="fgvc", epochs=4)


def test_interrupted_mid_epoch_resumes_to_the_same_result(tmp_path, monkeypatch):
    reference = vprompt.train(**NOISY, output=tmp_path / "whole")
    steps_per_epoch = 4  # 64 training images, batch 16
    original = CosineLRScheduler.step_update

    def crash(self, num_updates, metric=None):
        if num_updates == 2 * steps_per_epoch + 2:  # two steps into epoch 3
            raise KeyboardInterrupt
        return original(self, num_updates, metric)

    monkeypatch.setattr(CosineLRScheduler, "step_update", crash)
    with pytest.raises(KeyboardInterrupt):
        vprompt.train(**NOISY, output=tmp_path / "cut")
    run = RunDir(tmp_path / "cut")
    assert run.load_checkpoint()["progress"]["epoch"] == 2 and not run.finished
    monkeypatch.setattr(CosineLRScheduler, "step_update", original)
    resumed = vprompt.train(**NOISY, output=tmp_path / "cut", resume=True)
    same_weights(weights(tmp_path / "cut"), weights(tmp_path / "whole"))
    assert strip_timing(run.read_metrics()) == strip_timing(RunDir(tmp_path / "whole").read_metrics())
    assert resumed["val_accuracy"] == reference["val_accuracy"]


def test_resume_refuses_a_changed_config(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        vprompt.train(**dict(TINY, method="linear", epochs=1), output=tmp_path / "r")
    RunDir(tmp_path / "r").save_checkpoint({"never": "read"})
    with pytest.raises(ValueError, match=r"cannot resume: the config differs .*lr: 0.05 → 0.1"):
        vprompt.train(**dict(TINY, method="linear", epochs=1, lr=0.1), output=tmp_path / "r", resume=True)


def test_resume_by_name_refuses_a_hand_edited_config_and_resumes_an_unedited_one(
    tmp_path, monkeypatch, capsys
):
    """`train --resume RUN` reads RUN's config.yaml: an edit there (lr 0.05 → 0.5, epochs 2 → 3) is caught
    by the option digests in the checkpoint; the unedited run resumes to the uninterrupted result."""
    from vprompt.cli import main

    options = dict(TINY, method="linear", epochs=2)
    vprompt.train(**options, output=tmp_path / "whole")
    write_metrics = RunDir.write_metrics

    def write_then_interrupt(self, rows):
        write_metrics(self, rows)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunDir, "write_metrics", write_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            vprompt.train(**options, output=tmp_path / "cut")
    run = RunDir(tmp_path / "cut")
    original = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load(original), "lr": 0.5, "epochs": 3}))
    assert main(["train", "--resume", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "cannot resume" in err and "epochs (now 3), lr (now 0.5)" in err
    assert run.load_checkpoint()["progress"]["epoch"] == 1 and not run.finished
    (run / "config.yaml").write_text(original)
    assert main(["train", "--resume", str(run.path)]) == 0
    same_weights(weights(run.path), weights(tmp_path / "whole"))
    assert strip_timing(run.read_metrics()) == strip_timing(RunDir(tmp_path / "whole").read_metrics())


#: runs the CLI in a child that stops itself (SIGSTOP) right after its first epoch's checkpoint and metrics
#: are written, so the test waits on that event (waitpid) instead of on the clock
_STOP_AFTER_FIRST_EPOCH = """
import os, signal, sys
from vprompt.engine.rundir import RunDir
write_metrics = RunDir.write_metrics
def write_then_stop(self, rows):
    write_metrics(self, rows)
    os.kill(os.getpid(), signal.SIGSTOP)
RunDir.write_metrics = write_then_stop
from vprompt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_process_resumes_to_the_same_result(tmp_path):
    """SIGKILL a real training process after its first checkpoint; resume; compare."""
    options = dict(TINY, method="ap", method_options={"site": "block.4"}, data="synthetic:10x32", epochs=3)
    args = [sys.executable, "-c", _STOP_AFTER_FIRST_EPOCH, "train", "--output", str(tmp_path / "cut")]
    args += ["--site", "block.4"]
    for key, value in options.items():
        if key == "method_options":
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status = os.waitpid(process.pid, os.WUNTRACED)  # the event: stopped after epoch 1, or exited
    assert os.WIFSTOPPED(status), process.stderr.read().decode()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    run = RunDir(tmp_path / "cut")
    assert not run.finished and len(run.read_metrics()) == 1
    vprompt.train(**options, output=tmp_path / "cut", resume=True)
    vprompt.train(**options, output=tmp_path / "whole")
    same_weights(weights(tmp_path / "cut"), weights(tmp_path / "whole"))
    assert strip_timing(run.read_metrics()) == strip_timing(RunDir(tmp_path / "whole").read_metrics())


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = trainer_module.Trainer.train_epoch

    def poisoned(self, bar):
        if self.progress.epoch == 1:  # the second epoch produces NaN logits
            self.model.backbone.head.register_forward_hook(lambda m, a, out: out * float("nan"))
        return original(self, bar)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite in epoch 2 .*after epoch 1\) is kept"):
        options = dict(TINY, method="ap", method_options={"site": "block.1"}, nonfinite="error")
        vprompt.train(**options, output=tmp_path / "r")
    run = RunDir(tmp_path / "r")
    state = run.load_checkpoint()
    assert state["progress"]["epoch"] == 1 and len(run.read_metrics()) == 1 and not run.finished
    assert torch.isfinite(state["model"]["method.prompt"]).all()


@pytest.mark.numerics
def test_distributed_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) takes the same steps as 1 process with the same global batch."""
    options = dict(TINY, method="ap", data="synthetic:4x32", train_size=50, epochs=2, final=True)
    args = ["--output", str(tmp_path / "ddp"), "--site", "block.2", "--method", "ap"]
    for key in ("backbone", "img_size", "data", "train_size", "epochs", "batch_size", "lr"):
        args += ["--" + key.replace("_", "-"), str(options[key])]
    args += ["--random-init", "--no-progress", "--final"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "vprompt",
        "train",
    ]
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    single = vprompt.train(**options, method_options={"site": "block.2"}, output=tmp_path / "one")
    assert_trained_weights_close(weights(tmp_path / "ddp"), weights(tmp_path / "one"))
    ddp_rows, one_rows = RunDir(tmp_path / "ddp").read_metrics(), RunDir(tmp_path / "one").read_metrics()
    for a, b in zip(ddp_rows, one_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_accuracy"] == b["train_accuracy"]
    assert summary["test_accuracy"] == single["test_accuracy"]
