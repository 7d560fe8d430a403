"""The engine options the papers' recipes need: Adam, multistep decay, warm-up in steps, per-epoch
schedule steps, the VPT code base's head and weight decay, Resize 256 → CenterCrop 224."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import vprompt
from vprompt.data import build_transform
from vprompt.engine.config import OptimOptions, TrainConfig, check_config
from vprompt.engine.heads import VPT_BIAS, init_head
from vprompt.engine.optim import build_optimizer, build_schedule, param_groups


def lrs(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate each optimisation step runs at (the trainer calls step_update after each)."""
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config.section(OptimOptions))
    schedule = build_schedule(optimizer, config.section(OptimOptions), steps_per_epoch)
    rates = []
    for update in range(config.epochs * steps_per_epoch):
        schedule.step_update(update)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_multistep_per_epoch_equals_torch_multisteplr():
    # ILM-VP: MultiStepLR(milestones=[int(0.5 E), int(0.72 E)], gamma=0.1), stepped after every epoch
    cfg = TrainConfig(
        lr=0.01, epochs=25, schedule="multistep", lr_milestones=[0.5, 0.72], schedule_step="epoch"
    )
    check_config(
        TrainConfig(
            backbone="b",
            method="m",
            data="d",
            **{k: getattr(cfg, k) for k in ("lr", "epochs", "schedule", "lr_milestones", "schedule_step")},
        )
    )
    ours = lrs(cfg, steps_per_epoch=3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[12, 18], gamma=0.1)
    expected = []
    for _ in range(25):
        expected += [opt.param_groups[0]["lr"]] * 3
        opt.step()
        ref.step()
    assert ours == pytest.approx(expected, rel=1e-12)
    assert ours[12 * 3 - 1] == pytest.approx(0.01) and ours[12 * 3] == pytest.approx(0.001)
    assert ours[18 * 3] == pytest.approx(1e-4)


def test_cosine_per_epoch_with_warmup_is_vpts_schedule():
    # warm-up e / W then 0.5 (1 + cos(pi (e - W) / (E - W))), constant within each epoch; epoch 0 at 0
    cfg = TrainConfig(lr=2.0, epochs=12, warmup_epochs=4, schedule_step="epoch")
    ours = lrs(cfg, steps_per_epoch=5)
    for epoch in range(12):
        factor = epoch / 4 if epoch < 4 else 0.5 * (1 + math.cos(math.pi * (epoch - 4) / 8))
        assert ours[epoch * 5 : epoch * 5 + 5] == pytest.approx([2.0 * factor] * 5, rel=1e-12, abs=1e-15)
    # per step (the default) the rate moves within an epoch
    stepped = lrs(TrainConfig(lr=2.0, epochs=12, warmup_epochs=4), steps_per_epoch=5)
    assert stepped[1] == pytest.approx(2.0 / 20) and stepped[1] != ours[1]


def test_warmup_in_steps():
    cfg = TrainConfig(lr=1.0, epochs=3, warmup_steps=5)
    ours = lrs(cfg, steps_per_epoch=4)  # 12 steps: 5 of warm-up, 7 of cosine
    expected = [t / 5 for t in range(5)] + [0.5 * (1 + math.cos(math.pi * t / 7)) for t in range(7)]
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_adam_and_optimizer_choices():
    p = torch.nn.Parameter(torch.zeros(2))
    adam = build_optimizer([p], OptimOptions(optimizer="adam", lr=0.01, weight_decay=5e-4))
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["lr"] == 0.01 and adam.param_groups[0]["weight_decay"] == 5e-4
    assert type(build_optimizer([p], OptimOptions(optimizer="adamw"))) is torch.optim.AdamW


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(schedule="multistep"), "needs lr_milestones"),
        (dict(schedule="multistep", lr_milestones=[0.7, 0.5]), "increasing fractions"),
        (
            dict(schedule="multistep", lr_milestones=["half"]),
            "option 'lr_milestones': expected a number, got 'half'",
        ),
        (dict(schedule="multistep", lr_milestones=[0.5], min_lr=0.001), "min_lr"),
        (dict(lr_milestones=[0.5]), "lr_milestones are for schedule 'multistep'"),
        (dict(lr_decay=0.5), "lr_decay is for schedule 'multistep'"),
        (dict(warmup_steps=10, warmup_epochs=1), "not both"),
        (dict(schedule="step"), "option 'schedule': expected one of cosine, multistep, got 'step'"),
        (dict(schedule_step="batch"), "option 'schedule_step': expected one of step, epoch, got 'batch'"),
        (dict(head_init="xavier"), "option 'head_init': expected one of default, vpt, got 'xavier'"),
        (dict(preprocess="crop"), "option 'preprocess': expected one of protocol, resize-crop, got 'crop'"),
    ],
)
def test_schedule_options_that_do_not_fit_are_errors(options, message):
    with pytest.raises(ValueError, match=message):
        check_config(TrainConfig(backbone="b", method="m", data="d", **options))


# --------------------------------------------------------------------------------- the VPT head
def tiny_model(method="linear", classes=10, **options):
    bb = vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=classes, img_size=32)
    return vprompt.attach(bb, method, **options)


def test_vpt_head_init_statistics():
    model = tiny_model(classes=1200)  # a big new head: 1200 × 192 weights
    init_head(model, "vpt", seed=0)
    head = model.backbone.head
    w = head.weight.detach().double()
    assert w.std().item() == pytest.approx(math.sqrt(2 / 1200), rel=0.01)  # fan-out: sqrt(2 / C)
    assert abs(w.mean().item()) < 3 * math.sqrt(2 / 1200) / math.sqrt(w.numel())
    assert torch.equal(head.bias.detach(), torch.full((1200,), VPT_BIAS))
    assert pytest.approx(-4.59511985, abs=1e-8) == VPT_BIAS  # -log(99)
    # 10 classes: std sqrt(2/10) = 0.447, the fan-in would give sqrt(2/192) = 0.102
    small = tiny_model(classes=10)
    init_head(small, "vpt", seed=0)
    assert small.backbone.head.weight.std().item() == pytest.approx(0.4472, rel=0.05)
    again = tiny_model(classes=10)
    init_head(again, "vpt", seed=0)
    assert torch.equal(again.backbone.head.weight, small.backbone.head.weight)  # seeded


def test_vpt_weight_decay_spares_only_the_head_bias():
    model = tiny_model("bitfit", classes=10)
    trainable = [p for p in model.parameters() if p.requires_grad]
    default = param_groups(model, OptimOptions(weight_decay=1e-3))
    assert len(default) == 1 and len(default[0]["params"]) == len(trainable)
    groups = param_groups(model, OptimOptions(weight_decay=1e-3, head_init="vpt"))
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    assert groups[1]["params"] == [model.backbone.head.bias]
    assert len(groups[0]["params"]) == len(trainable) - 1  # every other bias still decays
    assert any(p is model.backbone.head.weight for p in groups[0]["params"])
    optimizer = build_optimizer(groups, OptimOptions(weight_decay=1e-3, head_init="vpt"))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3, 0.0]


def test_vpt_head_init_needs_a_trained_head():
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=None, img_size=32)
    model = vprompt.attach(bb, "vp-pad", mapping="first", num_classes=4)
    with pytest.raises(ValueError, match="source classifier"):
        init_head(model, "vpt", seed=0)


def test_train_records_the_vpt_head(tmp_path):
    from tiny_runs import TINY

    out = tmp_path / "run"
    vprompt.train(**{**TINY, "epochs": 1}, method="linear", head_init="vpt", output=out)
    loaded = vprompt.load_run(out)
    assert loaded.backbone.head.bias.shape == (4,)  # trained from -log(99) for one epoch
    assert (loaded.backbone.head.bias.detach() - VPT_BIAS).abs().max() < 1.0


# -------------------------------------------------------------------------- Resize 256 → crop 224
def test_resize_crop_preprocessing_is_resize_256_then_centre_crop_224():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8))
    dc = {"input_size": (3, 224, 224), "mean": (0.0,) * 3, "std": (1.0,) * 3, "interpolation": "bilinear"}
    ours = build_transform(dc, "vp", train=True, preprocess="resize-crop")(image)
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])(image)  # Bahng et al.
    assert torch.equal(ours, reference)
    plain = build_transform(dc, "vp", train=True)(image)
    assert plain.shape == ours.shape and not torch.equal(plain, ours)
    with pytest.raises(ValueError, match="own crops"):
        build_transform(dc, "fgvc", train=True, preprocess="resize-crop")


def test_schedule_options_on_the_command_line(tmp_path):
    from tiny_runs import TINY
    from vprompt.cli import main
    from vprompt.engine.rundir import RunDir

    out = tmp_path / "run"
    args = ["train", "--backbone", TINY["backbone"], "--random-init", "--img-size", "32"]
    args += ["--data", TINY["data"], "--method", "linear", "--epochs", "4", "--batch-size", "16"]
    args += ["--optimizer", "adam", "--schedule", "multistep", "--lr-milestones", "0.5", "0.75"]
    args += ["--schedule-step", "epoch", "--lr", "0.1", "--no-progress", "--output", str(out)]
    assert main(args) == 0
    config = RunDir(out).read_config()
    assert (config["optimizer"], config["schedule"], config["lr_milestones"]) == (
        "adam",
        "multistep",
        [0.5, 0.75],
    )
    # each epoch's row ends with the rate set for the next epoch: decays at epochs int(0.5·4) and int(0.75·4)
    assert [r["lr"] for r in RunDir(out).read_metrics()] == pytest.approx([0.1, 0.01, 0.001, 0.001])


def test_runs_saved_before_these_options_existed_still_match():
    from vprompt.engine.config import to_dict
    from vprompt.engine.run import check_resumable, config_differences

    new = ("schedule", "lr_milestones", "lr_decay", "warmup_steps", "schedule_step", "head_init")
    new += ("preprocess", "recipe")
    wanted = to_dict(TrainConfig(backbone="b", method="vp-pad", data="d"))
    old = {k: v for k, v in wanted.items() if k not in new}
    old["method_options"] = {"mapping": "ilm", "num_classes": 4, "mapping_seed": 0, "width": None}
    options = {"mapping": "ilm", "mapping_interval": 1}
    assert config_differences(old, {**wanted, "method_options": options}) == []
    assert config_differences(old, {**wanted, "schedule": "multistep"}) == [
        "schedule: 'cosine' → 'multistep'"
    ]
    current = {**wanted, "method_options": {**old["method_options"], "mapping_interval": 1}}
    check_resumable(old, current)
    with pytest.raises(ValueError, match="head_init"):
        check_resumable(old, {**current, "head_init": "vpt"})
