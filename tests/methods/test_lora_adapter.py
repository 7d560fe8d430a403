"""LoRA (peft) and bottleneck adapters: targets, parameter counts, exact start, what training changes, detach."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vprompt
from numerics import assert_exact
from vprompt import MethodNotApplicable
from vprompt.methods.adapter import Adapter, AdapterConfig
from vprompt.methods.lora import LoRA, LoRAConfig
from vprompt.model import TunedModel

R = 8
SWIN_DIMS = (24, 48, 96, 192)  # one block per stage


def vit() -> vprompt.Backbone:
    kwargs = dict(img_size=32, patch_size=4, depth=2, embed_dim=24, num_heads=2)
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=5, **kwargs)


def swin() -> vprompt.Backbone:
    kwargs = dict(img_size=56, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1))
    return vprompt.backbone("swin_tiny_patch4_window7_224", pretrained=False, num_classes=5, **kwargs)


def resnet() -> vprompt.Backbone:
    # timm zero-initialises each block's last BN scale, which would block every gradient into the blocks
    return vprompt.backbone("resnet18", pretrained=False, num_classes=5, img_size=32, zero_init_last=False)


def convnext() -> vprompt.Backbone:
    """Depthwise (grouped) 7×7 convs plus 1×1-conv MLPs (convnext_atto has conv_mlp=True).

    Layer scale starts at 1 rather than 1e-6 so that gradients reach every block in a few steps.
    """
    kwargs = dict(img_size=32, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), ls_init_value=1.0)
    return vprompt.backbone("convnext_atto", pretrained=False, num_classes=5, **kwargs)


def lora() -> LoRA:
    return LoRA(LoRAConfig(r=R))


def adapter() -> Adapter:
    return Adapter(AdapterConfig(r=R))


CASES = {
    "vit-lora": (vit, lora),
    "vit-adapter": (vit, adapter),
    "swin-lora": (swin, lora),
    "swin-adapter": (swin, adapter),
    "resnet-lora": (resnet, lora),
    "convnext-lora": (convnext, lora),
}


def head_params(bb: vprompt.Backbone) -> int:
    return sum(p.numel() for p in bb.head.parameters())


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fresh(make) -> vprompt.Backbone:
    """A backbone in eval mode, as TunedModel keeps it (drop-path off, BatchNorm statistics frozen)."""
    return make().eval()


def inputs(bb: vprompt.Backbone, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *bb.input_size)


# ------------------------------------------------------------------------------ parameter counts


@pytest.fixture(scope="module")
def vit_b16():
    return vprompt.backbone("vit_base_patch16_224", pretrained=False, num_classes=0)


def test_vit_b16_counts(vit_b16):
    model = TunedModel(vit_b16, LoRA(LoRAConfig()))
    assert model.trainable_parameters(head=False) == 12 * (8 * 768 + 2304 * 8) == 294_912
    model.unload()
    model = TunedModel(vit_b16, Adapter(AdapterConfig()))
    assert model.trainable_parameters(head=False) == 12 * (768 * 8 + 8 + 8 * 768 + 768) == 156_768
    model.unload()


def test_tiny_transformer_counts():
    d = 24
    bb = vit()
    model = TunedModel(bb, lora())
    assert model.method.target_names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert model.trainable_parameters(head=False) == 2 * (R * d + 3 * d * R)
    assert model.trainable_parameters() == 2 * (R * d + 3 * d * R) + d * 5 + 5
    model.unload()
    model = TunedModel(bb, adapter())
    assert model.trainable_parameters(head=False) == 2 * (2 * d * R + R + d)

    bb = swin()
    model = TunedModel(bb, lora())
    assert model.method.target_names == [f"layers.{i}.blocks.0.attn.qkv" for i in range(4)]
    assert model.trainable_parameters(head=False) == sum(R * d + 3 * d * R for d in SWIN_DIMS)
    assert model.trainable_parameters() == sum(R * d + 3 * d * R for d in SWIN_DIMS) + SWIN_DIMS[-1] * 5 + 5
    model.unload()
    model = TunedModel(bb, adapter())
    assert model.trainable_parameters(head=False) == sum(2 * d * R + R + d for d in SWIN_DIMS)


@pytest.mark.parametrize("make", [resnet, convnext])
def test_lora_cnn_targets_non_grouped_convs(make):
    bb = make()
    convs = {n: m for n, m in bb.model.named_modules() if isinstance(m, nn.Conv2d)}
    plain = {n: m for n, m in convs.items() if m.groups == 1}
    model = TunedModel(bb, lora())
    assert model.method.target_names == list(plain)
    assert len(plain) == {"resnet": 20, "convnext": 12}[bb.family.name]  # convnext: 4 depthwise left out
    if bb.family.name == "convnext":
        assert len(convs) - len(plain) == 4
    # peft's conv LoRA: A has the layer's kernel (in → r), B is 1×1 (r → out)
    expected = sum(
        R * m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels * R for m in plain.values()
    )
    assert model.trainable_parameters(head=False) == expected
    assert model.trainable_parameters() == expected + head_params(bb)


# ------------------------------------------------------------------------ start, training, detach


@pytest.mark.parametrize("case", CASES)
@pytest.mark.numerics
def test_starts_exactly_as_backbone(case, float64):
    make_bb, make_method = CASES[case]
    bb = fresh(make_bb)
    x = inputs(bb)
    with torch.no_grad():
        bare = bb(x)
        model = TunedModel(bb, make_method())
        assert_exact(model(x), bare)
        model.train()
        assert_exact(model(x), bare)


@pytest.mark.parametrize("case", CASES)
def test_training_changes_only_method_and_head(case):
    make_bb, make_method = CASES[case]
    bb = fresh(make_bb)
    model = TunedModel(bb, make_method())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = f"backbone.model.{bb.head_name}."
    own = {n for n in trainable if not n.startswith(head)}
    if isinstance(model.method, LoRA):
        assert own and all(".lora_A." in n or ".lora_B." in n for n in own)
        assert own == {n for n, _ in model.named_parameters() if ".lora_" in n}
    else:
        assert own == {f"method.{n}" for n, _ in model.method.named_parameters()}
    assert {n for n in trainable if n.startswith(head)} == {head + n for n, _ in bb.head.named_parameters()}

    before = snapshot(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = inputs(bb), torch.arange(4) % 5
    model.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    after = snapshot(model)
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable  # every trained tensor moved; every other one (buffers too) is bit-identical
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("case", CASES)
def test_detach_restores_backbone(case):
    make_bb, make_method = CASES[case]
    bb = fresh(make_bb)
    x = inputs(bb)
    with torch.no_grad():
        bare = bb(x)
    keys = list(bb.state_dict())
    modules = dict(bb.model.named_modules())
    flags = {n: p.requires_grad for n, p in bb.named_parameters()}
    model = TunedModel(bb, make_method())
    with torch.no_grad():  # make the method non-trivial, so a leftover would show in the outputs
        for n, p in model.named_parameters():
            if p.requires_grad and not n.startswith(f"backbone.model.{bb.head_name}."):
                p.normal_(0, 0.5)
        assert not torch.allclose(model(x), bare)
    if isinstance(model.method, LoRA):
        wrapped = list(model.method.target_names)
        assert all(type(bb.model.get_submodule(n)) is not type(modules[n]) for n in wrapped)

    assert model.unload() is bb
    assert list(bb.state_dict()) == keys
    assert dict(bb.model.named_modules()).keys() == modules.keys()
    assert all(m is modules[n] for n, m in bb.model.named_modules())  # the very same module objects
    assert all(type(m) in (nn.Linear, nn.Conv2d) for n, m in modules.items() if n.endswith(("qkv", "conv1")))
    assert {n: p.requires_grad for n, p in bb.named_parameters()} == flags
    assert not hasattr(bb.model, "peft_config")
    assert not any(m._forward_hooks for m in bb.modules())
    with torch.no_grad():
        assert torch.equal(bb(x), bare)


@pytest.mark.parametrize("case", ["vit-lora", "vit-adapter", "resnet-lora"])
def test_trainable_state_round_trip(case):
    make_bb, make_method = CASES[case]
    bb = fresh(make_bb)
    twin = copy.deepcopy(bb)
    model = TunedModel(bb, make_method())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    loaded = TunedModel(twin, make_method())
    loaded.load_trainable_state_dict(model.trainable_state_dict())
    x = inputs(bb, 2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_lora_dropout_follows_method_mode():
    bb = vit()
    model = TunedModel(bb, LoRA(LoRAConfig(r=R, dropout=0.5)))
    with torch.no_grad():
        for layer in model.method._layers:
            layer.lora_B["default"].weight.fill_(1.0)
    x = inputs(bb, 2)
    model.train()
    assert not any(m.training for n, m in bb.named_modules() if "lora_dropout" not in n)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


# ------------------------------------------------------------------------------------- refusals


def test_adapter_needs_transformer_blocks():
    bb = resnet()
    keys = list(bb.state_dict())
    with pytest.raises(MethodNotApplicable, match="resnet"):
        TunedModel(bb, adapter())
    assert list(bb.state_dict()) == keys
    assert all(p.requires_grad for p in bb.parameters())


@pytest.mark.parametrize(
    "targets, message",
    [("nonexistent", "nonexistent"), ("", "empty"), (" , ", "empty"), ("head", "head"), ("qkv,nope", "nope")],
)
def test_lora_bad_targets(targets, message):
    bb = vit()
    keys = list(bb.state_dict())
    with pytest.raises(MethodNotApplicable, match=message):
        TunedModel(bb, LoRA(LoRAConfig(targets=targets)))
    assert list(bb.state_dict()) == keys
    assert not hasattr(bb.model, "peft_config")


def test_lora_explicit_targets():
    bb = vit()
    model = TunedModel(bb, LoRA(LoRAConfig(r=2, targets="fc1, attn.proj")))
    assert model.method.target_names == [
        f"blocks.{i}.{s}" for i in range(2) for s in ("attn.proj", "mlp.fc1")
    ]
    assert model.trainable_parameters(head=False) == 2 * (2 * (24 + 24) + 2 * (24 + 96))
    with pytest.raises(MethodNotApplicable, match="Linear and Conv2d"):
        TunedModel(vit(), LoRA(LoRAConfig(targets="mlp")))


def test_lora_refuses_dilated_convs():
    # peft builds the conv LoRA branch without the layer's dilation: the branch's output would not fit
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=5, img_size=32, output_stride=16)
    with pytest.raises(MethodNotApplicable, match="dilation"):
        TunedModel(bb, lora())
    assert not hasattr(bb.model, "peft_config")


def test_lora_suffixes_match_inside_the_blocks_only_unless_named_in_full():
    """``proj`` is each block's attention projection, not the patch embedding's (which ends in ``proj``
    too): 98 tensors where 100 would have trained. ViT-B/16 counts, without the head."""
    bb = vprompt.backbone("vit_base_patch16_224", pretrained=False, num_classes=10)
    model = TunedModel(bb, LoRA(LoRAConfig(r=8, targets="qkv")))
    assert model.trainable_parameters(head=False) == 12 * 8 * (768 + 3 * 768) == 294_912
    model.unload()
    model = TunedModel(bb, LoRA(LoRAConfig(r=8, targets="proj")))
    assert model.method.target_names == [f"blocks.{i}.attn.proj" for i in range(12)]
    assert model.trainable_parameters(head=False) == 12 * 8 * (768 + 768) == 147_456
    assert len([p for p in model.parameters() if p.requires_grad]) == 2 * 12 + 2  # A, B per target; head
    model.unload()
    model = TunedModel(bb, LoRA(LoRAConfig(r=8, targets="patch_embed.proj, proj")))  # named in full: taken
    assert model.method.target_names[0] == "patch_embed.proj" and len(model.method.target_names) == 13
    assert model.trainable_parameters(head=False) == 147_456 + 8 * (3 * 16 * 16) + 768 * 8
    model.unload()
    with pytest.raises(MethodNotApplicable, match=r"'embed.proj' match no module of the blocks.*in full"):
        TunedModel(bb, LoRA(LoRAConfig(targets="qkv, embed.proj")))
