"""A method states the input it needs and the data pipeline delivers it: ILM-VP's expansive prompt gets
its image resized once, straight to the inner size, and padded as ILM-VP pads it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

import vprompt
from tiny_runs import TINY
from vprompt.data import build_transform
from vprompt.data.packaged import FOOLBOX_PIP
from vprompt.data.sources import DatasetInfo
from vprompt.engine.config import DataOptions, make_config
from vprompt.engine.run import build_model
from vprompt.engine.run_data import load_data, plan_data
from vprompt.methods.vp import ExpansiveConfig, ExpansivePrompt
from vprompt.packaged import package_file

SIDE = 224  # the backbone's input, as ILM-VP


def cifar_images() -> list[Image.Image]:
    """The 20 real CIFAR-10 test images (32 px) shipped with foolbox."""
    try:
        folder = package_file("foolbox", "data", FOOLBOX_PIP)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    paths = sorted(folder.glob("cifar10_*.png"))
    assert len(paths) == 20
    return [Image.open(p).convert("RGB") for p in paths]


def ilm_vp_reference(images, inner: int, theta: torch.Tensor) -> torch.Tensor:
    """ILM-VP's input, computed the way its code does: ToTensor (after transforms.Resize((inner, inner))
    unless the image already has that size), zero padding left/top int((out-in+1)/2), right/bottom
    int((out-in)/2), plus sigmoid(program) on the border; in pixels, before normalisation."""
    lo, hi = int((SIDE - inner + 1) / 2), int((SIDE - inner) / 2)
    mask = F.pad(torch.zeros(3, inner, inner), (lo, hi, lo, hi), value=1)
    out = []
    for image in images:
        if image.size != (inner, inner):
            image = TF.resize(image, [inner, inner])  # transforms.Resize((inner, inner)): PIL bilinear
        out.append(F.pad(TF.to_tensor(image), (lo, hi, lo, hi), value=0) + torch.sigmoid(theta) * mask)
    return torch.stack(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.double(), b.double()).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def prompted_pixels(model, x: torch.Tensor) -> torch.Tensor:
    """What enters the backbone, back in pixel space."""
    method = model.method
    with torch.no_grad():
        return method.prompt_input(x) * method.std + method.mean


@pytest.mark.parametrize("inner", [32, 31])  # 32: CIFAR at its own size; 31: resized once, odd padding
def test_expansive_input_matches_ilm_vp_on_real_cifar(inner):
    images = cifar_images()
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=10, img_size=SIDE)
    model = vprompt.attach(bb, ExpansivePrompt(ExpansiveConfig(inner_size=inner)))
    assert model.input_size == (3, inner, inner)  # the method asks for its inner image
    lo, hi = (SIDE - inner + 1) // 2, (SIDE - inner) // 2
    assert model.method.padding == (lo, hi, lo, hi)  # the extra pixel goes left and top, as ILM-VP
    with torch.no_grad():
        model.method.theta.normal_(generator=torch.Generator().manual_seed(0))
    # the transform derived from the model's data config: one resize, straight to the inner size
    transform = build_transform(model.data_config, "vp", train=False)
    x = torch.stack([transform(image) for image in images])
    assert x.shape == (20, 3, inner, inner)
    ours = prompted_pixels(model, x)
    reference = ilm_vp_reference(images, inner, model.method.theta.detach())
    assert (ours - reference).abs().max().item() < 2e-6  # fp32 rounding of (x - mean) / std · std + mean
    assert psnr(ours, reference) > 110
    # the old path (resize to the backbone's size, shrink inside the method) blurs the image
    old = build_transform(bb.data_config, "vp", train=False)
    blurred = prompted_pixels(model, torch.stack([old(image) for image in images]))
    inside = (..., slice(lo, lo + inner), slice(lo, lo + inner))
    assert (
        psnr(blurred[inside], reference[inside]) < 45
    )  # measured: 32.9 dB (inner 32), 41.9 dB (31); ours 165 dB


def test_small_datasets_are_fed_at_their_own_size():
    info = DatasetInfo("x", "x", "x", 10, tuple("abcdefghij"), ("train",), image_size=32)
    config = ExpansiveConfig()
    ExpansivePrompt.for_data(config, info)
    assert config.inner_size == 32  # CIFAR / SVHN / GTSRB, as ILM-VP
    for size, expected in ((None, None), (224, None)):
        config = ExpansiveConfig()
        ExpansivePrompt.for_data(
            config, DatasetInfo("x", "x", "x", 2, ("a", "b"), ("train",), image_size=size)
        )
        assert config.inner_size == expected  # then 128 at 224, scaled with the input size
    given = ExpansiveConfig(inner_size=20)
    ExpansivePrompt.for_data(given, info)
    assert given.inner_size == 20


def test_run_delivers_the_inner_image_end_to_end(tmp_path):
    # 24-px images, inner 16: each item is the image resized once to 16 px, then normalised
    values = {**TINY, "data": "synthetic:4x24", "method": "vp-expansive", "epochs": 1}
    values["method_options"] = {"inner_size": 16}
    config = make_config(dict(values))
    plan = plan_data(config.section(DataOptions))
    model = build_model(config, plan.info.num_classes, plan.info)
    data = load_data(config.section(DataOptions), plan, model.data_config, model.num_classes, config.seed)
    raw = vprompt.data.load("synthetic:4x24", None, "train", None)
    image, label = raw[5]
    reference = TF.normalize(TF.to_tensor(image.resize((16, 16), Image.BILINEAR)), [0.5] * 3, [0.5] * 3)
    item, item_label = data.train[5]
    assert item_label == label and torch.equal(item, reference)
    # a whole run: the default inner size comes from the data (16-px images are fed at 16 px), the
    # frozen-prefix cache holds the inner images, evaluation and prediction use the same transform
    out = tmp_path / "run"
    summary = vprompt.train(**{**TINY, "data": "synthetic:4x16"}, method="vp-expansive", output=out)
    resolved = vprompt.engine.rundir.RunDir(out).read_config()
    assert resolved["method_options"]["inner_size"] == 16
    assert resolved["resolved"]["data_input_size"] == [3, 16, 16]
    assert resolved["resolved"]["input_size"] == [3, 32, 32]
    assert summary["cache"]["site"] == "input"
    again = vprompt.evaluate_run(out, split="val", device="cpu")
    assert again["accuracy"] == pytest.approx(summary["val_accuracy"])
    picture = tmp_path / "one.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(picture)
    from vprompt.engine.inference import predict

    [(path, ranked)] = predict(out, [Path(picture)], top=2)
    assert path == str(picture) and len(ranked) == 2
