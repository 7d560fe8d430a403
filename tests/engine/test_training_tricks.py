"""timm's and HF Trainer's training tricks: augmentation, random erasing, mixup/cutmix, an EMA of the trained
tensors, gradient accumulation and early stopping. Each is recorded in the run, refused where it would
break the protocol, switches the frozen-prefix cache off (with the reason) where it makes the inputs
change every epoch, and resumes exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing

import vprompt
from numerics import assert_exact
from tiny_runs import TINY, same_weights, strip_timing, weights
from vprompt.data import build_transform
from vprompt.engine import trainer as trainer_module
from vprompt.engine.cache import CacheRefused
from vprompt.engine.config import LoopOptions, TrainConfig, check_config
from vprompt.engine.run_data import SeededItems, seeded
from vprompt.engine.rundir import RunDir

AP = dict(TINY, method="ap", method_options={"site": "block.2"})
DC = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3, "interpolation": "bicubic"}
BASE = dict(backbone="b", method="linear", data="synthetic:4x32")


# ------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"accumulate": 0}, "accumulate must be at least 1"),
        ({"early_stop": 0}, "early_stop must be at least 1"),
        ({"ema": 1.0}, r"ema is a decay in \(0, 1\)"),  # would never move
        ({"ema": 0.0}, r"ema is a decay in \(0, 1\)"),
        ({"mixup": -0.2}, "mixup and cutmix are Beta alphas"),
        ({"random_erasing": 1.5}, r"random_erasing is a probability, in \[0, 1\]"),
        ({"mixup_prob": 0.5}, "mixup_prob is for --mixup / --cutmix, and neither is on"),
        ({"early_stop_metric": "val_loss"}, "early_stop_metric is for --early-stop, which is not on"),
        ({"augment": "rand-x9"}, "unknown augment 'rand-x9'; choose one of: protocol, none, basic"),
        ({"augment": "fancy"}, "unknown augment 'fancy'"),
    ],
)
def test_options_out_of_range_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        check_config(TrainConfig(**{**BASE, **options}))


def test_timm_auto_augment_strings_are_accepted():
    for augment in ("none", "basic", "randaugment", "trivialaugment", "rand-m9-mstd0.5", "augmix-m5", "v0"):
        check_config(TrainConfig(**BASE, augment=augment))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(final=True, early_stop=2), "--early-stop needs a validation split, but this run has none"),
        (dict(val_split="test", early_stop=2), "--early-stop would choose on the test split 'test'"),
        (dict(val_split="test", selection="best-val"), "--selection best-val would choose on the test split"),
    ],
)
def test_choosing_on_no_or_the_test_split_is_refused_before_anything_is_built(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        vprompt.train(**dict(AP, **options), output=tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_cli_has_the_options_and_refuses_early_stopping_in_a_final_run(tmp_path, capsys):
    from vprompt.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--augment", "--random-erasing", "--mixup", "--cutmix", "--mixup-prob", "--ema"):
        assert flag in text
    assert "--accumulate" in text and "--early-stop" in text and "--early-stop-metric" in text
    args = ["train", "--backbone", "vit_tiny_patch16_224", "--random-init", "--method", "linear"]
    args += ["--data", "synthetic:4x32", "--final", "--early-stop", "2", "--output", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("vprompt train: error: --early-stop needs a validation split") and err.count("\n") == 1
    )


# ------------------------------------------------------------------------------- augmentation
def test_augment_choices_build_timm_transforms():
    image = Image.new("RGB", (40, 48), (120, 30, 200))
    protocol = build_transform(DC, "vp", train=True)
    assert build_transform(DC, "vp", train=True, augment="none")(image).equal(protocol(image))
    kinds = {
        "basic": [],
        "randaugment": [RandAugment],
        "trivialaugment": [RandAugment],
        "rand-m9-mstd0.5": [RandAugment],
    }
    for augment, extra in kinds.items():
        transform = build_transform(DC, "vp", train=True, augment=augment)
        names = [type(t).__name__ for t in transform.transforms]
        assert names[:3] == ["ToRGB", "RandomResizedCropAndInterpolation", "RandomHorizontalFlip"], names
        assert all(any(isinstance(t, k) for t in transform.transforms) for k in extra), names
        assert transform(image).shape == (3, 32, 32)
    trivial = next(
        t
        for t in build_transform(DC, train=True, augment="trivialaugment").transforms
        if isinstance(t, RandAugment)
    )
    assert (
        trivial.num_layers == 1
        and trivial.ops[0].prob == 1.0
        and trivial.ops[0].magnitude_std == float("inf")
    )
    # evaluation keeps the protocol's transform; random erasing is appended to training transforms only
    assert build_transform(DC, "vp", augment="randaugment", random_erasing=0.5)(image).equal(
        build_transform(DC, "vp")(image)
    )
    erasing = build_transform(DC, "fgvc", train=True, random_erasing=0.5).transforms[-1]
    assert isinstance(erasing, RandomErasing) and erasing.probability == 0.5 and erasing.mode == "pixel"


@pytest.mark.parametrize("augment", ["randaugment", "trivialaugment"])
def test_every_op_of_the_presets_runs_at_the_largest_magnitude_they_draw(augment):
    """timm's PosterizeIncreasing keeps 0 bits at magnitude 10, which Pillow >= 11 refuses mid-epoch."""
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    policy = next(
        t for t in build_transform(DC, train=True, augment=augment).transforms if isinstance(t, RandAugment)
    )
    for op in policy.ops:
        noisy = 0 < op.magnitude_std < float("inf")  # gaussian noise reaches the clip; uniform draws reach m
        for magnitude in (0.0, (op.magnitude_max or 10) if noisy else op.magnitude):
            op.prob, op.magnitude, op.magnitude_std = 1.0, magnitude, 0.0
            op(image)


def test_fgvc_with_augment_none_trains_on_its_evaluation_transform():
    image = Image.new("RGB", (40, 48), (120, 30, 200))
    train = build_transform(DC, "fgvc", train=True, augment="none")
    assert train(image).equal(build_transform(DC, "fgvc")(image))


def test_timm_augmentation_is_seeded_per_epoch_and_item():
    """timm's transforms draw from Python's and NumPy's RNGs: an item is the same for the same (seed,
    epoch, index) whatever else ran before (a resumed run sees the same images), and differs by epoch."""
    data = vprompt.data.load("synthetic:4x32", None, "train", DC, augment="randaugment", random_erasing=0.5)
    items = SeededItems(data, seed=3, augments=True)
    first = items[(0, 5)][0]
    torch.manual_seed(123)
    random.seed(7)
    np.random.seed(7)
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    assert items[(0, 5)][0].equal(first)
    assert not items[(1, 5)][0].equal(first)
    after = (random.getstate(), np.random.get_state()[1], torch.get_rng_state())
    assert state[0] == after[0] and (state[1] == after[1]).all() and state[2].equal(after[2])  # untouched


# --------------------------------------------------------------------------- cache decisions
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (dict(augment="randaugment"), "--augment randaugment transforms training images randomly"),
        (dict(random_erasing=0.25), "--random-erasing 0.25 erases random patches of training images"),
        (dict(mixup=0.8), "--mixup/--cutmix mix the training images of every batch"),
    ],
)
def test_random_inputs_switch_the_cache_off_with_the_reason(tmp_path, capsys, options, reason):
    run = dict(AP, epochs=1, train_size=16, eval_size=16, **options)
    with pytest.raises(CacheRefused, match=f"--cache memory refused: {reason}, so activations change"):
        vprompt.train(**run, cache="memory", output=tmp_path / "explicit")
    summary = vprompt.train(**run, output=tmp_path / "auto")
    assert summary["cache"] == {"site": None, "why": f"{reason}, so activations change every epoch"}
    assert f"vprompt: frozen-prefix cache off: {reason}" in capsys.readouterr().err


def test_augment_none_keeps_the_cache_of_an_fgvc_run(tmp_path):
    run = dict(AP, protocol="fgvc", epochs=1, train_size=16, eval_size=16)
    summary = vprompt.train(**run, augment="none", output=tmp_path / "r")
    assert summary["cache"]["site"] == "block.2" and summary["train_randomness"] is None


# ------------------------------------------------------------------------------------ records
def test_the_tricks_are_recorded_in_config_and_summary(tmp_path):
    options = dict(augment="trivialaugment", random_erasing=0.25, mixup=0.8, cutmix=1.0, mixup_prob=0.5)
    options |= dict(label_smoothing=0.1, ema=0.9, accumulate=2, early_stop=3, early_stop_metric="val_loss")
    summary = vprompt.train(
        **dict(AP, epochs=2, train_size=32, eval_size=16, batch_size=8, **options), output=tmp_path / "r"
    )
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert {k: config[k] for k in options} == options
    assert config["resolved"]["effective_batch_size"] == 16
    assert config["resolved"]["train_randomness"].startswith("--augment trivialaugment transforms")
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["mixup"] == {"mixup": 0.8, "cutmix": 1.0, "mixup_prob": 0.5, "label_smoothing": 0.1}
    assert saved["ema"]["decay"] == 0.9 and "EMA weights" in saved["ema"]["kept"]
    assert (saved["accumulate"], saved["effective_batch_size"], saved["augment"]) == (2, 16, "trivialaugment")
    assert saved["early_stop"]["patience"] == 3 and saved["early_stop"]["metric"] == "val_loss"
    assert saved["early_stop"]["stopped_epoch"] is None and saved["epochs_trained"] == 2
    assert saved["random_erasing"] == 0.25 and summary["cache"]["site"] is None


def test_mixup_needs_even_batches(tmp_path):
    with pytest.raises(ValueError, match=r"need batches of an even number of images, .* batches of 7"):
        vprompt.train(**dict(AP, mixup=0.8, train_size=23, batch_size=8), output=tmp_path / "r")


def test_mixup_is_timms_with_label_smoothing_folded_in():
    config = TrainConfig(**BASE, mixup=0.5, label_smoothing=0.1, seed=4)
    mixer = trainer_module.Mixer(config.section(LoopOptions), num_classes=4)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = mixer(x.clone(), y, epoch=2, batch=1)
    with seeded(hash((4, 2, 1))):  # timm's Mixup itself, its draws seeded from (seed, epoch, batch)
        timm_x, timm_targets = Mixup(mixup_alpha=0.5, label_smoothing=0.1, num_classes=4)(x.clone(), y)
    assert mixed.equal(timm_x) and targets.equal(timm_targets)
    assert not mixer(x.clone(), y, epoch=2, batch=2)[0].equal(mixed)  # another batch, another draw
    lam = float((targets[0, 0] - 0.025) / 0.9)  # row 0: smoothed one-hots of 0 (0.925/0.025) and 1, mixed
    assert 0 < lam < 1 and torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    torch.testing.assert_close(targets.sum(-1), torch.ones(6))
    assert float(targets.min()) >= 0.025 - 1e-7  # the smoothing's floor: 0.1 / 4 classes


# ------------------------------------------------------------------------------ accumulation
@pytest.mark.numerics
def test_accumulating_two_batches_equals_a_batch_twice_as_large(tmp_path, float64):
    """Batch 8 × 2 accumulated = batch 16, in float64: the same steps (the last, partial one included),
    the lr scaled by the effective batch and the warm-up counted in optimiser steps."""
    run = dict(
        AP, epochs=2, train_size=56, eval_size=16, lr=1.0, lr_scale=True, warmup_epochs=1.0, cache="off"
    )
    accumulated = vprompt.train(**dict(run, batch_size=8, accumulate=2), output=tmp_path / "acc")
    large = vprompt.train(**dict(run, batch_size=16), output=tmp_path / "large")
    vprompt.train(**dict(run, batch_size=8), output=tmp_path / "small")  # the same steps, not accumulated
    a, b, c = weights(tmp_path / "acc"), weights(tmp_path / "large"), weights(tmp_path / "small")
    for key in a:
        assert_exact(a[key], b[key], key)
    assert any(float((c[k] - b[k]).abs().max()) > 1e-3 * float(b[k].abs().max()) for k in b)  # it matters
    rows_a, rows_b = RunDir(tmp_path / "acc").read_metrics(), RunDir(tmp_path / "large").read_metrics()
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert row_a["lr"] == row_b["lr"] and row_a["train_accuracy"] == row_b["train_accuracy"]
        assert row_a["train_loss"] == pytest.approx(row_b["train_loss"], rel=1e-12)
    assert accumulated["val_accuracy"] == large["val_accuracy"]


# ----------------------------------------------------------------------------------------- EMA
@pytest.mark.numerics
def test_ema_weights_are_the_hand_computed_average_and_what_is_kept(tmp_path, monkeypatch, float64):
    """timm's EMA (as its train.py: the first step copies, then e = d·e + (1 − d)·w after every step) of
    the trained tensors is what is validated, saved and evaluated; the training itself goes on from the
    trained weights (the checkpoint keeps both)."""
    after_steps: list[dict[str, torch.Tensor]] = []
    step = trainer_module.Trainer.optimizer_step

    def recording(self):
        step(self)
        after_steps.append({k: v.clone() for k, v in self.model.trainable_state_dict().items()})

    monkeypatch.setattr(trainer_module.Trainer, "optimizer_step", recording)
    decay = 0.8
    run = dict(AP, epochs=2, train_size=32, eval_size=16, cache="off", ema=decay)
    summary = vprompt.train(**run, output=tmp_path / "r")
    assert len(after_steps) == 4  # 2 epochs × 32 images / 16
    ema = dict(after_steps[0])
    for trained in after_steps[1:]:
        ema = {k: decay * ema[k] + (1 - decay) * trained[k] for k in ema}
    saved = weights(tmp_path / "r")
    for key in saved:
        assert_exact(saved[key], ema[key], key)
    state = RunDir(tmp_path / "r").load_checkpoint()
    for key, value in state["model"].items():  # training goes on from the trained weights
        assert_exact(value, after_steps[-1][key], key)
    assert not state["model"]["method.prompt"].equal(saved["method.prompt"])
    rows = RunDir(tmp_path / "r").read_metrics()
    assert rows[-1]["val_accuracy"] == summary["val_accuracy"]  # the epoch's validation is the EMA's too
    assert vprompt.evaluate_run(tmp_path / "r", split="val")["accuracy"] == summary["val_accuracy"]


# ------------------------------------------------------------------------------ early stopping
@pytest.mark.parametrize(
    ("metric", "script", "patience", "stopped", "best"),
    [
        # accuracy 50, 60, 55, 60 (equal is no improvement): 2 stale validations after epoch 2
        ("val_accuracy", [50.0, 60.0, 55.0, 60.0, 70.0, 80.0], 2, 4, 2),
        # loss 1.0, 0.9, 0.95, 0.91, 0.92: 3 stale validations after epoch 2
        ("val_loss", [1.0, 0.9, 0.95, 0.91, 0.92, 0.5], 3, 5, 2),
    ],
)
def test_early_stopping_stops_after_patience_validations_without_improvement(
    tmp_path, monkeypatch, capsys, metric, script, patience, stopped, best
):
    real = trainer_module.Trainer.evaluate

    def scripted(self, dataset, keep=False):  # the validation after epoch e reads script[e - 1]
        value = script[self.progress.epoch]
        accuracy, loss = (value, 1.0) if metric == "val_accuracy" else (50.0, value)
        return {**real(self, dataset, keep), "accuracy": accuracy, "loss": loss}

    monkeypatch.setattr(trainer_module.Trainer, "evaluate", scripted)
    run = dict(AP, epochs=6, train_size=16, eval_size=16, early_stop=patience, early_stop_metric=metric)
    summary = vprompt.train(**run, selection="best-val", output=tmp_path / "r")
    assert summary["early_stop"]["stopped_epoch"] == stopped and summary["epochs_trained"] == stopped
    assert summary["early_stop"]["best_epoch"] == best and summary["early_stop"]["best"] == script[best - 1]
    assert len(RunDir(tmp_path / "r").read_metrics()) == stopped
    assert summary["epochs"] == 6
    lines = capsys.readouterr().out.splitlines()  # the log says why it ended, after the last epoch's line
    assert [line.split()[1] for line in lines[:stopped]] == [f"{e}/6" for e in range(1, stopped + 1)]
    assert lines[stopped] == (
        f"early stop: {metric} did not improve for {patience} validations (best {script[best - 1]:.4g} "
        f"after epoch {best}); stopped after epoch {stopped} of 6"
    )
    vprompt.train(**run, quiet=True, output=tmp_path / "quiet")
    assert capsys.readouterr() == ("", "")
    monkeypatch.undo()
    assert vprompt.evaluate_run(tmp_path / "r", split="test")["split"] == "test"  # choosing nothing there


# ---------------------------------------------------------------------------------------- resume
TRICKS = dict(
    AP,
    epochs=3,
    batch_size=8,
    accumulate=2,
    ema=0.7,
    mixup=0.4,
    cutmix=1.0,
    augment="randaugment",
    random_erasing=0.25,
    early_stop=5,
    train_size=32,
    eval_size=16,
)


def test_a_run_with_every_trick_resumes_to_the_same_result(tmp_path, monkeypatch):
    """Killed one batch into an optimiser step of epoch 3: EMA, accumulation, mixup, augmentation and the
    early-stopping state all continue exactly."""
    reference = vprompt.train(**TRICKS, output=tmp_path / "whole")
    original = trainer_module.Trainer.loss_sum
    seen = []

    def crash(self, logits, targets):
        seen.append(1)
        if len(seen) == 2 * 4 + 2:  # epoch 3's 2nd batch (4 an epoch): one batch of a step accumulated
            raise KeyboardInterrupt
        return original(self, logits, targets)

    monkeypatch.setattr(trainer_module.Trainer, "loss_sum", crash)
    with pytest.raises(KeyboardInterrupt):
        vprompt.train(**TRICKS, output=tmp_path / "cut")
    run = RunDir(tmp_path / "cut")
    state = run.load_checkpoint()
    assert state["progress"]["epoch"] == 2 and state["progress"]["updates"] == 4 and state["ema"] is not None
    monkeypatch.setattr(trainer_module.Trainer, "loss_sum", original)
    resumed = vprompt.train(**TRICKS, output=tmp_path / "cut", resume=True)
    same_weights(weights(tmp_path / "cut"), weights(tmp_path / "whole"))
    assert strip_timing(run.read_metrics()) == strip_timing(RunDir(tmp_path / "whole").read_metrics())
    assert resumed["val_accuracy"] == reference["val_accuracy"]
    assert resumed["early_stop"] == reference["early_stop"]


def test_a_run_that_stopped_early_resumes_without_training_more(tmp_path, monkeypatch):
    """Interrupted after the epoch it stopped at was checkpointed, before its summary: the resumed run
    trains no further epoch and ends as the uninterrupted one."""
    run = dict(AP, epochs=6, train_size=16, eval_size=16, early_stop=1, ema=0.5, lr=0.0001)
    reference = vprompt.train(**run, output=tmp_path / "whole")
    stopped = reference["early_stop"]["stopped_epoch"]
    assert stopped is not None and stopped < 6
    write_summary = RunDir.write_summary

    def interrupted(self, summary):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_summary", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vprompt.train(**run, output=tmp_path / "cut")
    monkeypatch.setattr(RunDir, "write_summary", write_summary)
    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", lambda self, bar: pytest.fail("trained on"))
    resumed = vprompt.train(**run, output=tmp_path / "cut", resume=True)
    assert resumed["early_stop"] == reference["early_stop"] and resumed["epochs_trained"] == stopped
    same_weights(weights(tmp_path / "cut"), weights(tmp_path / "whole"))
    assert resumed["val_accuracy"] == reference["val_accuracy"]
