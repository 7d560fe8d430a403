"""Options that would silently ruin a run are refused before anything is built; YAML values are typed."""

from __future__ import annotations

import math

import pytest
import torch

import vprompt
from tiny_runs import TINY
from vprompt.engine import NonFiniteLossError
from vprompt.engine import trainer as trainer_module
from vprompt.engine.config import TrainConfig, check_config, make_config
from vprompt.engine.rundir import RunDir

BASE = dict(backbone="b", method="linear", data="synthetic:4x32")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grad_clip": -1.0}, "grad_clip must be positive"),  # would be gradient ascent
        ({"grad_clip": 0.0}, "grad_clip must be positive"),  # would be no learning
        ({"min_lr": 0.5, "lr": 0.1}, r"min_lr must be in \[0, lr\]"),  # the cosine would climb
        ({"min_lr": math.nan}, "min_lr must be a finite number"),
        ({"lr": math.inf}, "lr must be a finite number"),
        ({"warmup_epochs": math.inf}, "warmup_epochs must be a finite number"),
        ({"warmup_epochs": 20.0, "epochs": 10}, "warmup_epochs .* is longer than the run"),
        ({"img_size": 0}, "img_size must be a positive number"),  # used to mean 224
        ({"img_size": -5}, "img_size must be a positive number"),
        ({"workers": -1}, "workers must be >= 0"),
    ],
)
def test_options_that_would_ruin_a_run_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        check_config(TrainConfig(**{**BASE, **options}))


def test_workers_beyond_four_per_cpu_core_are_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setattr("vprompt.engine.config.usable_cpus", lambda: 2)
    check_config(TrainConfig(**BASE, workers=8))
    with pytest.raises(
        ValueError, match=r"workers 9 is more than 4 × the 2 CPU cores .*--workers 8 or fewer"
    ):
        check_config(TrainConfig(**BASE, workers=9))
    with pytest.raises(ValueError, match="workers 10000 is more than"):
        vprompt.train(**dict(TINY, method="linear", workers=10000), output=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_yaml_values_are_coerced_to_the_option_types():
    config = make_config({**BASE, "lr": "1e-2", "epochs": "3", "progress": "false", "grad_clip": None})
    assert (config.lr, config.epochs, config.progress, config.grad_clip) == (0.01, 3, False, None)
    assert isinstance(config.lr, float) and isinstance(config.epochs, int)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("lr", "fast", "a number"),
        ("epochs", 2.5, "an integer"),
        ("epochs", True, "an integer"),
        ("optimizer", "rmsprop", "one of sgd, adam, adamw"),
        ("progress", 3, "true or false"),
        ("data", ["a"], "a string"),
    ],
)
def test_a_wrongly_typed_yaml_value_names_its_key(key, value, expected):
    with pytest.raises(ValueError, match=rf"option '{key}': expected {expected}"):
        make_config({**BASE, key: value})


def test_the_cli_reads_a_yaml_exponent_as_a_number(tmp_path):
    from vprompt.cli import main

    (tmp_path / "run.yaml").write_text("lr: 1e-2\nepochs: 1\n")  # YAML 1.1 reads `1e-2` as a string
    args = ["train", "--config", str(tmp_path / "run.yaml"), "--output", str(tmp_path / "run")]
    for key, value in TINY.items():
        if key not in ("epochs", "lr", "progress", "random_init"):
            args += ["--" + key.replace("_", "-"), str(value)]
    assert main([*args, "--method", "linear", "--random-init", "--no-progress"]) == 0
    assert RunDir(tmp_path / "run").read_config()["lr"] == 0.01


def test_weights_that_blow_up_on_the_last_step_stop_the_run_without_an_adapter(tmp_path, monkeypatch):
    """The loss of the last step is finite, but its update makes the weights NaN: caught after the epoch,
    before any checkpoint, adapter or NaN-holding summary is written."""
    original = trainer_module.Trainer.train_epoch

    def poisoned(self, bar):
        row = original(self, bar)
        if self.progress.epoch == 1:  # the second epoch's last update
            with torch.no_grad():
                self.params[0].fill_(float("nan"))
        return row

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", poisoned)
    run = RunDir(tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"weights or the validation loss .* epoch 2.*after epoch 1"):
        vprompt.train(**dict(TINY, method="linear", epochs=3, nonfinite="error"), output=run.path)
    assert not run.finished and not (run / "adapter").exists()
    state = run.load_checkpoint()
    assert state["progress"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


TINY_ARGS = ["--backbone", TINY["backbone"], "--random-init", "--img-size", "32", "--data", TINY["data"]]


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "Traceback" not in err and err.startswith(f"vprompt {command}: error: ")
    ), err
    return err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method_options: 5\n", "option 'method_options': expected a mapping"),
        ("recipe: [a, b]\n", "option 'recipe': expected a string, got ['a', 'b']"),
        ("schedule: multistep\nlr_milestones: 0.5\n", "option 'lr_milestones': expected a list"),
        ("method_options: [site]\n", "option 'method_options': expected a mapping"),
    ],
)
def test_wrongly_typed_yaml_containers_are_one_line_on_the_cli(tmp_path, capsys, text, message):
    from vprompt.cli import main

    (tmp_path / "bad.yaml").write_text(text)
    args = ["train", "--config", str(tmp_path / "bad.yaml"), *TINY_ARGS, "--method", "linear"]
    assert main([*args, "--output", str(tmp_path / "run")]) == 2
    assert message in one_line_error(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_wrong_backbone_build_args_in_an_adapter_config_are_one_line(tmp_path, capsys):
    import json

    from vprompt.cli import main

    run = tmp_path / "run"
    vprompt.train(**dict(TINY, method="linear", epochs=1), output=run)
    path = run / "adapter" / "vprompt_config.json"
    good = json.loads(path.read_text())
    for key, value, message in [
        ("img_size", "big", "backbone.build_args: option 'img_size': expected an integer, got 'big'"),
        ("bogus", 1, "backbone.build_args: "),  # timm: unexpected keyword argument 'bogus'
    ]:
        bad = json.loads(json.dumps(good))
        bad["backbone"]["build_args"][key] = value
        path.write_text(json.dumps(bad))
        assert main(["eval", str(run)]) == 2
        err = one_line_error(capsys, "eval")
        assert f"{path}: {message}" in err and key in err and "the adapter config is damaged" in err
