"""The run's normalisation and resize options (``mean``, ``std``, ``interpolation``, ``antialias``) and the
final training split (``final_train``): the resize without antialiasing equals TensorFlow 2's
``tf.image.resize`` (the VPT code's VTAB pipeline) within a float32 rounding, runs record and keep the
options, bad values are clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import vprompt
from tiny_runs import TINY
from vprompt import data as vdata
from vprompt.data.transforms import ResizeNoAntialias, build_transform
from vprompt.engine.config import DataOptions
from vprompt.engine.run import as_config, build_model
from vprompt.engine.run_data import Splits, resolve_splits
from vprompt.engine.rundir import RunDir

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
#: (source height, width) → (output height, width): shrinking, growing, non-square, the same size
SIZES = [((57, 83), (32, 32)), ((20, 13), (32, 32)), ((300, 200), (224, 224)), ((97, 61), (40, 50))]
SIZES += [((32, 32), (224, 224)), ((64, 64), (64, 64))]


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")  # imported after torch (the other order can crash)


def images():
    rng = np.random.default_rng(0)
    for (h, w), out in SIZES:
        yield rng.integers(0, 256, (h, w, 3), dtype=np.uint8), out


@pytest.mark.numerics
def test_the_resize_without_antialiasing_is_tensorflows(tf):
    """The same images through ``tf.image.resize(..., 'bilinear', antialias=False)`` (TF2: half-pixel
    centres) and vprompt's resize: at most 0.01 of a grey level apart (float32 rounding; measured 0.0033 on
    the 300×200 → 224 image), where PIL's antialiased bilinear resize is several grey levels away."""
    worst, pil_worst = 0.0, 0.0
    for pixels, (oh, ow) in images():
        ref = tf.image.resize(pixels, [oh, ow], method="bilinear", antialias=False).numpy()
        ours = ResizeNoAntialias((oh, ow), "bilinear")(Image.fromarray(pixels)).permute(1, 2, 0).numpy()
        worst = max(worst, float(np.abs(ours * 255 - ref).max()))
        pil = np.asarray(Image.fromarray(pixels).resize((ow, oh), Image.BILINEAR), np.float32)
        pil_worst = max(pil_worst, float(np.abs(pil - ref).max()))
    assert worst < 0.01  # grey levels (of 255): well within one
    assert pil_worst > 1  # the test can tell a different resize apart


@pytest.mark.numerics
def test_the_vtab_transform_is_the_vpt_codes_pipeline(tf):
    """vprompt's vtab evaluation transform with ImageNet mean/std, bilinear, no antialiasing against the VPT
    code's steps (tf.image.resize, / 255, minus mean, over std): within 0.01 grey level per channel."""
    config = {"input_size": (3, 40, 50), "interpolation": "bilinear", "antialias": False, **IMAGENET}
    transform = build_transform(config, "vtab", train=False)
    mean, std = (np.array(IMAGENET[k], np.float32) for k in ("mean", "std"))
    for pixels, _ in images():
        ref = (tf.image.resize(pixels, [40, 50]).numpy() / 255.0 - mean) / std
        ours = transform(Image.fromarray(pixels)).permute(1, 2, 0).numpy()
        assert ours.shape == ref.shape
        assert np.abs((ours - ref) * std * 255).max() < 0.01


def test_shorter_side_resizes_and_crops_follow_torchvision():
    """fgvc's and resize-crop's shorter-side resize keeps torchvision's output size; crops on tensors."""
    resize = ResizeNoAntialias(36)
    assert resize.output_size(57, 83) == (36, 52) and resize.output_size(83, 57) == (52, 36)
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "antialias": False, **IMAGENET}
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (57, 83, 3), dtype=np.uint8))
    for protocol, preprocess, train in (("fgvc", "protocol", True), ("fgvc", "protocol", False)):
        out = build_transform(config, protocol, train, preprocess)(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert build_transform(config, "vp", False, "resize-crop")(image).shape == (3, 32, 32)
    bicubic = build_transform({**config, "interpolation": "bicubic"}, "vtab")(image)
    assert bicubic.shape == (3, 32, 32)


def test_a_run_records_and_keeps_its_normalisation_and_resize(tmp_path):
    out = tmp_path / "run"
    options = dict(IMAGENET, interpolation="bilinear", antialias=False)
    vprompt.train(**dict(TINY, epochs=1), method="linear", output=out, **options)
    resolved = RunDir(out).read_config()["resolved"]
    assert resolved["normalisation"] == IMAGENET
    assert (resolved["interpolation"], resolved["antialias"]) == ("bilinear", False)
    model = vprompt.load_run(out)  # the backbone is rebuilt with them: predict prepares images alike
    assert {k: list(model.data_config[k]) for k in ("mean", "std")} == IMAGENET
    assert model.data_config["antialias"] is False
    plain = build_model(as_config(dict(TINY, method="linear"), {}), 4).data_config  # without them
    assert (plain["mean"], plain["interpolation"], plain.get("antialias", True)) == (
        (0.5,) * 3,
        "bicubic",
        True,
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}, "one value per channel"),
        ({"mean": [float("nan")] * 3}, "finite numbers"),
        ({"interpolation": "lanczos", "antialias": False}, "PIL's only"),
        ({"antialias": False, "augment": "basic"}, "--augment basic"),
        ({"final_train": "val"}, "final_train"),
    ],
)
def test_bad_input_options_are_clear_errors(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        vprompt.train(**dict(TINY, epochs=1), method="linear", output=tmp_path / "run", **options)


def test_the_final_training_split(tmp_path):
    """``final_train train`` trains a final run on the dataset's own train split (no val images), recorded;
    data that ships no val (vprompt holds val out) then trains on all of its training set."""
    sizes = {}
    for final_train in ("trainval", "train"):
        out = tmp_path / final_train
        vprompt.train(
            **dict(TINY, epochs=1), method="linear", final=True, final_train=final_train, output=out
        )
        config = RunDir(out).read_config()
        assert config["final_train"] == final_train
        data = config["resolved"]["data"]
        assert data["splits"] == {"train": final_train, "val": None, "test": "test"}
        sizes[final_train] = data["sizes"]["train"]
    assert sizes == {"trainval": 80, "train": 64}  # synthetic:4x32: 16 + 4 per class, 16 per class
    tuning = as_config(dict(TINY, method="linear", final_train="train"), {})  # a tuning run: train → val
    assert resolve_splits(tuning.section(DataOptions), "vp") == Splits("train", "val", None)
    items = [(torch.zeros(3, 8, 8), i % 2) for i in range(8)]
    assert vdata.own_train_split(vdata.from_objects({"train": items, "test": items})) == "trainval"
    assert vdata.own_train_split(vdata.from_objects({"train": items, "val": items})) == "train"
    assert vdata.own_train_split("synthetic:4x32") == "train"
