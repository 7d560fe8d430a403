"""SSF: where it acts, how many parameters it trains, merging, export, and the official code's numbers.

``fixtures/official_reference_ssf.json`` holds logits and gradients the official SSF code
(dongzelian/SSF) computed in float64 on tiny ViT, Swin and ConvNeXt models built from the tensors the
functions below make (how: ``fixtures/README.md``, section "SSF"). Only the numbers are stored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_official_reference import redraw_
from timm.layers import LayerNorm2d
from timm.layers.norm_act import BatchNormAct2d
from torch import nn

import vprompt
from numerics import assert_exact
from vprompt import MethodNotApplicable
from vprompt.methods.ssf import SSF, ScaleShift
from vprompt.model import TunedModel

FIXTURE = Path(__file__).parent / "fixtures" / "official_reference_ssf.json"

# ------------------------------------------------------------------------------------------------
# The documented procedure (fixtures/README.md, "SSF"). Changing anything here invalidates the fixture.

NUM_CLASSES = 5
LABELS = (1, 3)
WEIGHT_SEED, INPUT_SEED, SSF_SEED = 0, 1, 2
#: the tiny models the official code was run on: (vprompt backbone name, keyword arguments)
REFERENCE_MODELS = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2)),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, window_size=4, depths=(2, 2), embed_dim=16, num_heads=(1, 2)),
    ),
    "convnext": (
        "convnext_atto",
        dict(img_size=32, depths=(1, 1, 2, 1), dims=(12, 20, 28, 36), conv_mlp=False),
    ),
}


def reference_backbone(kind: str) -> vprompt.Backbone:
    """The tiny timm model with a new 5-class head, every parameter redrawn (WEIGHT_SEED, as
    ``test_official_reference.redraw_``: norms ``1 + 0.1·n``, biases ``0.1·n``, weights ``n/√fan_in``)."""
    name, kwargs = REFERENCE_MODELS[kind]
    backbone = vprompt.backbone(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    redraw_(backbone.model.named_parameters(), WEIGHT_SEED)
    return backbone.eval()


def redraw_ssf_(model: TunedModel, seed: int = SSF_SEED) -> None:
    """Each adapted output in forward order: ``γ = 1 + 0.2·n``, then ``β = 0.2·n`` (one generator)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for point in model.method.points:
            ss = model.method.ssf[point.name.replace(".", "_")]
            ss.scale.copy_(1 + 0.2 * torch.randn(point.channels, generator=generator))
            ss.shift.copy_(0.2 * torch.randn(point.channels, generator=generator))


def reference_model(kind: str) -> TunedModel:
    model = TunedModel(reference_backbone(kind), SSF())
    redraw_ssf_(model)
    return model.eval()


def reference_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images ``randn(2, 3, 32, 32)`` from INPUT_SEED and their labels."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    return torch.randn(2, 3, 32, 32, generator=generator), torch.tensor(LABELS)


def reference_run(model: TunedModel) -> dict:
    """Logits, mean cross-entropy, and the gradient of every trained tensor (by its name in ``model``)."""
    x, y = reference_inputs()
    x = x.to(torch.get_default_dtype())
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, list(named.values()))
    return {"logits": logits.detach(), "loss": loss.detach(), "grads": dict(zip(named, grads, strict=True))}


# ------------------------------------------------------------------------------------------------


def vit(num_classes=4, **kwargs):
    kwargs = dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2) | kwargs
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **kwargs)


def swin(num_classes=4):
    kwargs = dict(img_size=56, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1))
    return vprompt.backbone(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=num_classes, **kwargs
    )


def convnext(num_classes=4):
    kwargs = dict(img_size=32, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    return vprompt.backbone("convnext_atto", pretrained=False, num_classes=num_classes, **kwargs)


def resnet(num_classes=4):
    return vprompt.backbone("resnet18", pretrained=False, num_classes=num_classes, img_size=32)


def mobilenet(num_classes=4):
    return vprompt.backbone("mobilenetv3_small_050", pretrained=False, num_classes=num_classes, img_size=32)


def tv_resnet(num_classes=4):
    return vprompt.backbone("torchvision:resnet18", pretrained=False, num_classes=num_classes, img_size=32)


FACTORIES = [vit, swin, convnext, resnet, mobilenet, tv_resnet]


def vit_count(dim: int, depth: int) -> int:
    """The official ViT: per block γ, β after norm1 (D), qkv (3D), proj (D), norm2 (D), fc1 (4D), fc2 (D);
    after the patch projection (D) and the final norm (D)."""
    per_block = 2 * (dim + 3 * dim + dim + dim + 4 * dim + dim)
    return depth * per_block + 2 * dim + 2 * dim


def test_vit_b16_trains_282_724_parameters_with_a_100_class_head():
    bb = vprompt.backbone("vit_base_patch16_224", pretrained=False, num_classes=100)
    model = vprompt.attach(bb, "ssf")
    ssf = vit_count(dim=768, depth=12)
    head = 768 * 100 + 100
    assert (ssf, head) == (205_824, 76_900)
    assert model.trainable_parameters(head=False) == ssf
    assert model.trainable_parameters() == ssf + head == 282_724
    # the official initialisation: γ ~ N(1, 0.02²), β ~ N(0, 0.02²)
    scales = torch.cat([p.scale for p in model.method.ssf.values()]).detach()
    shifts = torch.cat([p.shift for p in model.method.ssf.values()]).detach()
    assert abs(float(scales.mean()) - 1) < 1e-3 and abs(float(scales.std()) - 0.02) < 1e-3
    assert abs(float(shifts.mean())) < 1e-3 and abs(float(shifts.std()) - 0.02) < 1e-3


def test_tiny_counts_follow_each_architecture():
    # ViT: depth 3, D 24, 4 classes
    assert vprompt.attach(vit(), "ssf").trainable_parameters(head=False) == vit_count(24, 3) == 1_680
    # Swin: stages of 1 block at 24, 48, 96, 192 channels. Blocks as the ViT's (22·C each); the patch
    # projection and its norm (2·2·24); the final norm. None at the patch merging (as the official code
    # runs: it defines one there but never switches it on)
    dims = (24, 48, 96, 192)
    expected = 22 * sum(dims) + 2 * 2 * 24 + 2 * 192
    assert expected == 8_400
    assert vprompt.attach(swin(), "ssf").trainable_parameters(head=False) == expected
    # ConvNeXt: stem conv + norm; per block conv_dw, norm, fc1 (4C), fc2 (C) = 14·C; the final (Identity)
    # norm_pre; none at the downsampling (as Swin's merging); plus the head's LayerNorm (2·32), which the
    # official code trains with the classifier (every "head.*" parameter)
    dims = (8, 16, 24, 32)
    expected = 2 * (8 + 8) + 14 * sum(dims) + 2 * 32 + 2 * 32
    assert expected == 1_280
    model = vprompt.attach(convnext(), "ssf")
    assert model.trainable_parameters(head=False) == expected
    assert model.trainable_parameters() == expected + 32 * 4 + 4
    # ResNet-18: γ, β after each of its 20 BatchNorms: the stem (64), two per basic block, the three
    # projection shortcuts (128, 256, 512)
    bns = 64 + 2 * 2 * (64 + 128 + 256 + 512) + (128 + 256 + 512)
    assert 2 * bns == 9_600
    for factory in (resnet, tv_resnet):
        assert vprompt.attach(factory(), "ssf").trainable_parameters(head=False) == 2 * bns


def test_every_adapted_output_is_the_one_the_official_code_names():
    model = vprompt.attach(vit(), "ssf")
    block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    assert [p.name for p in model.method.points] == (
        ["patch_embed.proj"] + [f"blocks.{i}.{n}" for i in range(3) for n in block] + ["norm"]
    )
    names = [p.name for p in vprompt.attach(vit(pre_norm=True), "ssf").method.points]  # CLIP-style
    assert names[:2] == ["patch_embed.proj", "norm_pre"]
    names = [p.name for p in vprompt.attach(swin(), "ssf").method.points]
    assert names[:2] == ["patch_embed.proj", "patch_embed.norm"] and names[-1] == "norm"
    assert not [n for n in names if "downsample" in n]
    names = [p.name for p in vprompt.attach(convnext(), "ssf").method.points]
    assert names[:2] == ["stem.0", "stem.1"] and names[-1] == "norm_pre"
    assert names[2:6] == [f"stages.0.blocks.0.{n}" for n in ("conv_dw", "norm", "mlp.fc1", "mlp.fc2")]
    assert names[6] == "stages.1.blocks.0.conv_dw"


def test_batchnorm_with_its_activation_is_scaled_before_the_activation(float64):
    bb = mobilenet()
    model = vprompt.attach(bb, "ssf")
    bn = bb.model.bn1  # timm's BatchNormAct2d: BatchNorm, then hard-swish, in one module
    assert isinstance(bn, BatchNormAct2d) and "bn1" in [p.name for p in model.method.points]
    x = torch.randn(2, *bb.input_size)
    ss = model.method.ssf["bn1"]
    with torch.no_grad():
        ss.shift.fill_(-100.0)  # shifted before the activation, hard-swish gives 0 everywhere
        stem = bn(bb.model.conv_stem(x))
    assert torch.equal(stem, torch.zeros_like(stem))


@pytest.mark.numerics
@pytest.mark.parametrize("factory", FACTORIES + [lambda: vit(global_pool="avg")], ids=lambda f: f.__name__)
def test_merge_and_unload_folds_ssf_into_the_weights(factory, float64):
    torch.manual_seed(0)
    bb = factory().eval()
    bare = {k: v.clone() for k, v in bb.model.state_dict().items()}
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        original = bb(x)
    model = vprompt.attach(bb, "ssf")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
        adapted = model.eval()(x)
    merged = model.merge_and_unload()
    assert merged is bb and not any(isinstance(m, ScaleShift) for m in bb.modules())
    assert not any(m._forward_hooks for m in bb.modules())  # a plain model again
    state = bb.model.state_dict()
    # the same tensors, changed in value; an Identity before a γ, β became an affine layer
    added = set(state) - set(bare)
    identity = {"vit": "norm", "convnext": "norm_pre"}
    assert not (set(bare) - set(state))
    assert all(k.split(".")[0] in identity.values() for k in added), added
    with torch.no_grad():
        after = bb(x)
    assert_exact(after, adapted, "merged logits")
    assert (after - original).abs().max() > 1e-2  # the scales and shifts are in the weights
    assert model.method.points and not model.method._handles


def test_refused_where_ssf_is_not_defined():
    with pytest.raises(MethodNotApplicable, match="ssf is placed by the model's structure; .* 'generic'"):
        vprompt.attach(
            vprompt.backbone("torchvision:shufflenet_v2_x0_5", pretrained=False, num_classes=4, img_size=64),
            "ssf",
        )
    v2 = vprompt.backbone(
        "swinv2_tiny_window8_256",
        pretrained=False,
        num_classes=4,
        img_size=32,
        window_size=4,
        depths=(1, 1),
        embed_dim=16,
        num_heads=(1, 1),
    )
    flags = {n: p.requires_grad for n, p in v2.named_parameters()}
    with pytest.raises(MethodNotApplicable, match="defines it for Swin v1; SwinTransformerV2 computes"):
        vprompt.attach(v2, "ssf")
    assert not any(m._forward_hooks for m in v2.modules())  # the backbone is left as it was
    assert {n: p.requires_grad for n, p in v2.named_parameters()} == flags
    with pytest.raises(ValueError, match="method 'ssf' has no option 'r'"):
        vprompt.attach(vit(), "ssf", r=2)


def test_the_cls_row_alone_is_used_with_ssf():
    bb = vit()
    vprompt.attach(bb, "ssf")
    assert bb.cls_only_status() == "CLS row only"


def test_onnx_export_is_the_bare_backbones_graph(tmp_path):
    import onnx

    from tiny_runs import TINY
    from vprompt.engine.inference import export_onnx

    options = dict(TINY, epochs=1)
    for method in ("ssf", "linear"):
        vprompt.train(**options, method=method, output=tmp_path / method)
    diffs = {m: export_onnx(tmp_path / m, tmp_path / f"{m}.onnx") for m in ("ssf", "linear")}
    # the same operations (ONNX Identity nodes only alias initialisers, which the exporter shares
    # where their values coincide, as the untrained norms' ones and zeros do)
    nodes = {
        m: sorted(
            n.op_type for n in onnx.load(str(tmp_path / f"{m}.onnx")).graph.node if n.op_type != "Identity"
        )
        for m in diffs
    }
    assert nodes["ssf"] == nodes["linear"]  # γ, β folded into the weights: no extra operation
    assert diffs["ssf"] is not None and diffs["ssf"] < 1e-4, diffs  # against the unmerged model


def test_layer_norm_2d_is_channels_first():
    assert issubclass(LayerNorm2d, nn.LayerNorm)  # why the axis test checks LayerNorm2d first
    axes = {p.name: p.axis for p in vprompt.attach(convnext(), "ssf").method.points}  # conv MLP
    assert axes["stem.1"] == axes["stages.0.blocks.0.norm"] == axes["stages.0.blocks.0.mlp.fc1"] == 1
    axes = {p.name: p.axis for p in reference_model("convnext").method.points}  # Linear MLP
    assert axes["stem.1"] == 1 and axes["stages.0.blocks.0.norm"] == axes["stages.0.blocks.0.mlp.fc1"] == -1


# ------------------------------------------------------------------------------------------------
# Against the official code (dongzelian/SSF), in float64


@pytest.fixture(scope="module")
def official():
    return json.loads(FIXTURE.read_text())


@pytest.mark.numerics
@pytest.mark.parametrize("kind", list(REFERENCE_MODELS))
def test_logits_and_gradients_equal_the_official_codes(kind, official, float64):
    want = official["models"][kind]
    model = reference_model(kind)
    assert model.trainable_parameters() == want["trainable_parameters"]
    got = reference_run(model)
    assert_exact(got["logits"], torch.tensor(want["logits"]), "logits")
    assert math.isclose(float(got["loss"]), want["loss"], rel_tol=1e-10)
    assert set(got["grads"]) == set(want["grad_norms"])  # the same trained tensors, mapped by name
    for name, grad in got["grads"].items():
        assert math.isclose(float(grad.norm()), want["grad_norms"][name], rel_tol=1e-10), name
    for name, values in want["grad_elements"].items():
        assert_exact(got["grads"][name].flatten()[: len(values)], torch.tensor(values), name)
