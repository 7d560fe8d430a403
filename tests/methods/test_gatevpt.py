"""GateVPT: parameter counts, where the gates and temperatures act, and the official code's numbers.

``fixtures/gatevpt_reference.json`` holds values computed by the official code (ryongithub/GatedPromptTuning;
commit and procedure in ``fixtures/README.md``) from exactly the tensors the functions below build; only
the numbers are stored, none of the official code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from test_official_reference import redraw_

import vprompt
from numerics import assert_exact
from tiny_runs import TINY as TINY_RUN
from vprompt import MethodNotApplicable
from vprompt.engine.inference import export_onnx
from vprompt.methods.gatevpt import TEMPERATURE_RANGE, GateVPT, GateVPTConfig
from vprompt.methods.vpt import VPTConfig, VPTShallow
from vprompt.model import TunedModel

FIXTURE = Path(__file__).parent / "fixtures" / "gatevpt_reference.json"

# ------------------------------------------------------------------------------------------------
# The documented procedure (fixtures/README.md). Changing anything here invalidates the fixture.

#: a tiny CLS-pooled ViT: 32 px, 8-px patches (4×4 grid), 3 blocks, D = 24, 2 heads, 4 classes
TINY = dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2)
NUM_CLASSES, NP = 4, 3
LABELS = (1, 3)
WEIGHT_SEED, INPUT_SEED, METHOD_SEED, MASK_SEED = 0, 1, 2, 4
#: the temperatures the reference sets: block 1's lies above the official clamp (10), so it is clamped
REFERENCE_TEMPERATURES = (0.8, 12.0, 1.25)
REFERENCE_DROPOUT = 0.1


def reference_backbone() -> vprompt.Backbone:
    """timm ``vit_tiny_patch16_224`` at :data:`TINY`, 4 classes, every parameter redrawn (WEIGHT_SEED)."""
    backbone = vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES, **TINY)
    redraw_(backbone.model.named_parameters(), WEIGHT_SEED)
    return backbone.eval()


def reference_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images ``randn(2, 3, 32, 32)`` from INPUT_SEED and their labels."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    return torch.randn(2, 3, 32, 32, generator=generator), torch.tensor(LABELS)


def reference_mask() -> torch.Tensor:
    """The prompt dropout's mask for the training-mode case: ``(2, NP, 24)``, kept with p 0.9, scaled."""
    generator = torch.Generator().manual_seed(MASK_SEED)
    keep = torch.rand(2, NP, TINY["embed_dim"], generator=generator) >= REFERENCE_DROPOUT
    return keep.float() / (1 - REFERENCE_DROPOUT)


class FixedDropout(torch.nn.Module):
    """Stands in for the prompt dropout: multiplies by a fixed mask (in training mode)."""

    p = REFERENCE_DROPOUT

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype) if self.training else x


def attach_reference_method(backbone: vprompt.Backbone) -> TunedModel:
    """GateVPT (3 prompts, defaults otherwise), parameters redrawn (METHOD_SEED), then the temperatures
    set to :data:`REFERENCE_TEMPERATURES`; the prompt dropout replaced by :func:`reference_mask`."""
    model = TunedModel(backbone, GateVPT(GateVPTConfig(num_prompts=NP)))
    redraw_(model.method.named_parameters(), METHOD_SEED)
    with torch.no_grad():
        model.method.temperatures.copy_(torch.tensor(REFERENCE_TEMPERATURES))
    model.method.prompt_dropout = FixedDropout(reference_mask())
    return model.eval()


def run_reference(mode: str) -> dict:
    """Logits, loss and the gradient of every trainable tensor, in ``eval`` or ``train`` mode."""
    images, labels = reference_inputs()
    model = attach_reference_method(reference_backbone())
    dtype = torch.get_default_dtype()
    model.to(dtype).train(mode == "train")
    named = dict(model.method.named_parameters())
    named.update({f"head.{n}": p for n, p in model.backbone.head.named_parameters()})
    logits = model(images.to(dtype))
    loss = F.cross_entropy(logits, labels)
    grads = torch.autograd.grad(loss, list(named.values()))
    return {
        "logits": logits.detach(),
        "loss": loss.detach(),
        "grads": {n: g for n, g in zip(named, grads, strict=True)},
        "temperatures_after": model.method.temperatures.detach().clone(),
    }


# ------------------------------------------------------------------------------------------------
# Against the official code


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())


def test_the_fixture_records_its_provenance(reference):
    assert set(reference["commits"]) == {"ryongithub/GatedPromptTuning"}
    assert all(len(sha) == 40 for sha in reference["commits"].values())
    assert reference["computed_with"]["dtype"] == "float64"
    assert set(reference["modes"]) == {"eval", "train"}


@pytest.mark.numerics
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_logits_and_gradients_match_the_official_code(reference, mode, float64):
    """In float64, to float64 rounding (1e-10 of each tensor's scale): the same computation."""
    want = reference["modes"][mode]
    got = run_reference(mode)
    assert_exact(got["logits"], torch.tensor(want["logits"]), f"{mode} logits")
    assert_exact(got["loss"], torch.tensor(want["loss"]), f"{mode} loss")
    assert (
        set(got["grads"])
        == set(want["grads"])
        == {
            "prompts",
            "gate_logits",
            "temperatures",
            "head.weight",
            "head.bias",
        }
    )
    for name, grad in got["grads"].items():
        expected = torch.tensor(want["grads"][name])
        assert expected.abs().min() > 0 or name == "prompts"  # every entry matters (prompts: dropout zeros)
        assert_exact(grad, expected.reshape(grad.shape), f"{mode} gradient of {name}")
    # the clamp: block 1's temperature 12 acts as 10, with the gradient of the stored value; training
    # stores the clamped value as the official code does, evaluation leaves the parameter alone (the
    # official code stores it in both modes)
    assert want["temperatures_after"] == [0.8, 10.0, 1.25]
    stored = want["temperatures_after"] if mode == "train" else list(REFERENCE_TEMPERATURES)
    assert_exact(got["temperatures_after"], torch.tensor(stored), "temperatures after the forward")


# ------------------------------------------------------------------------------------------------
# Counts


@pytest.fixture(scope="module")
def vit_b16():
    return vprompt.backbone("vit_base_patch16_224", pretrained=False, num_classes=100)


def test_parameter_count_vit_b16(vit_b16):
    """ViT-B/16: D = 768, L = 12 blocks; 100 prompts, a gate for each block but the last, a temperature
    for each block, and a 100-class head."""
    dim, depth, prompts, classes = 768, 12, 100, 100
    method = prompts * dim + (depth - 1) + depth
    assert method == 76_823
    model = vprompt.attach(vit_b16, "gatevpt")
    try:
        assert model.trainable_parameters(head=False) == method
        assert model.trainable_parameters() == method + dim * classes + classes == 153_723
        shapes = {n: tuple(p.shape) for n, p in model.method.named_parameters()}
        assert shapes == {"prompts": (1, 100, 768), "gate_logits": (11,), "temperatures": (12,)}
    finally:
        model.unload()
    model = vprompt.attach(vit_b16, "gatevpt", temperature=False)
    try:
        assert model.trainable_parameters(head=False) == method - depth == 76_811
    finally:
        model.unload()


def test_parameter_count_tiny():
    model = vprompt.attach(reference_backbone(), "gatevpt", num_prompts=NP)
    assert model.trainable_parameters(head=False) == NP * 24 + 2 + 3 == 77
    assert model.trainable_parameters() == 77 + 24 * NUM_CLASSES + NUM_CLASSES == 177


def test_defaults_and_initial_values():
    model = vprompt.attach(reference_backbone(), "gatevpt", num_prompts=NP)
    m = model.method
    assert (m.config.num_prompts, m.config.gate_init, m.config.dropout, m.config.temperature) == (
        NP,
        5.0,
        0.1,
        True,
    )
    assert GateVPTConfig().num_prompts == 100 and m.prompt_dropout.p == 0.1
    assert torch.equal(m.gate_logits, torch.full((2,), -5.0))
    assert torch.equal(m.gates(), torch.full((2,), -5.0).sigmoid())
    assert torch.equal(m.temperatures, torch.ones(3))
    bound = math.sqrt(6 / (3 * 8 * 8 + 24))  # VPT's xavier bound with 8-px patches
    assert m.prompts.abs().max() <= bound and m.prompts.abs().max() > 0.8 * bound


# ------------------------------------------------------------------------------------------------
# What the gates and temperatures do


def direct_forward(bb: vprompt.Backbone, method: GateVPT, x: torch.Tensor) -> torch.Tensor:
    """The paper's computation written out on timm's modules: shallow prompts, per-block attention
    logits / tau, gated prompt slots after every block but the last, prompts removed before the head.
    Modules the method hooks are called through ``forward`` (without their hooks)."""
    model, prefix, n = bb.model, bb.site("embed").prefix_tokens, method.config.num_prompts
    tokens = model.norm_pre.forward(model._pos_embed(model.patch_embed(x)))
    prompts = method.prompts.expand(x.shape[0], -1, -1)
    tokens = torch.cat([tokens[:, :prefix], prompts, tokens[:, prefix:]], dim=1)
    depth = len(model.blocks)
    for i, block in enumerate(model.blocks):
        attn, batch, count, dim = block.attn, *tokens.shape
        heads = attn.num_heads
        h = block.norm1(tokens)
        q, k, v = attn.qkv.forward(h).reshape(batch, count, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        tau = method.temperatures[i].clamp(*TEMPERATURE_RANGE) if method.temperatures is not None else 1
        weights = ((q @ k.transpose(-2, -1)) * attn.scale / tau).softmax(dim=-1)
        o = (weights @ v).transpose(1, 2).reshape(batch, count, dim)
        y = tokens + block.ls1(attn.proj(o))
        y = y + block.ls2(block.mlp(block.norm2(y)))
        if i < depth - 1:
            g = method.gate_logits[i].sigmoid()
            mixed = g * y[:, prefix : prefix + n] + (1 - g) * tokens[:, prefix : prefix + n]
            y = torch.cat([y[:, :prefix], mixed, y[:, prefix + n :]], dim=1)
        tokens = y
    tokens = torch.cat([tokens[:, :prefix], tokens[:, prefix + n :]], dim=1)
    return model.forward_head(model.norm(tokens))


def dinov2_reg() -> vprompt.Backbone:
    """Patch 14, CLS + 4 registers, LayerScale, 3×3 grid, 2 blocks."""
    kwargs = dict(img_size=42, depth=2, embed_dim=24, num_heads=2)
    return vprompt.backbone("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=5, **kwargs)


def randomised(model: TunedModel) -> TunedModel:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        m = model.method
        m.prompts.normal_(0, 0.5, generator=g)
        m.gate_logits.normal_(0, 1, generator=g)
        if m.temperatures is not None:
            m.temperatures.uniform_(0.5, 2.0, generator=g)
    return model.eval()


@pytest.mark.numerics
@pytest.mark.parametrize("temperature", [True, False])
@pytest.mark.parametrize("factory", [reference_backbone, dinov2_reg], ids=["cls", "cls+registers"])
def test_forward_is_the_written_out_computation(factory, temperature, float64):
    bb = factory()
    model = randomised(vprompt.attach(bb, "gatevpt", num_prompts=NP, temperature=temperature))
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        assert_exact(model(x), direct_forward(bb, model.method, x), "logits")
    if not temperature:
        assert not any(b.attn.qkv._forward_hooks for b in bb.model.blocks)


@pytest.mark.numerics
def test_open_gates_at_unit_temperature_are_vpt_shallow(float64):
    """Gates at 1 pass every block's prompt outputs on: VPT-shallow with the same prompts."""
    bb = reference_backbone()
    x = torch.randn(2, *bb.input_size)
    model = vprompt.attach(bb, "gatevpt", num_prompts=NP, gate_init=-1000.0)
    assert torch.equal(model.method.gates(), torch.ones(2))
    prompts = model.method.prompts.detach().clone()
    with torch.no_grad():
        gated = model(x)
    model.unload()
    shallow = TunedModel(bb, VPTShallow(VPTConfig(num_prompts=NP))).eval()
    with torch.no_grad():
        shallow.method.prompts.copy_(prompts)
        assert_exact(shallow(x), gated, "logits")


def test_closed_gates_keep_the_prompts_as_inserted():
    """Gates at 0: every block's prompt slots enter the next block exactly as inserted."""
    bb = reference_backbone()
    entering = {}
    for i, block in enumerate(bb.model.blocks):
        block.register_forward_pre_hook(lambda _m, args, i=i: entering.__setitem__(i, args[0]))
    model = vprompt.attach(bb, "gatevpt", num_prompts=NP, gate_init=1000.0)
    assert torch.equal(model.method.gates(), torch.zeros(2))
    with torch.no_grad():
        model(torch.randn(2, *bb.input_size))
    for i in range(3):
        torch.testing.assert_close(
            entering[i][:, 1 : 1 + NP], model.method.prompts.expand(2, -1, -1), rtol=0, atol=0
        )


def test_training_projects_the_temperatures_and_evaluation_clamps_without_storing():
    bb = reference_backbone()
    model = vprompt.attach(bb, "gatevpt", num_prompts=NP)
    m = model.method
    with torch.no_grad():
        m.temperatures.copy_(torch.tensor([0.001, 12.0, 1.5]))
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        evaluated = model.eval()(x)
    assert torch.equal(m.temperatures, torch.tensor([0.001, 12.0, 1.5]))  # eval: nothing stored
    assert torch.equal(m.temperature(0), torch.tensor(0.01)) and torch.equal(
        m.temperature(1), torch.tensor(10.0)
    )
    model.train()
    m.prompt_dropout.p = 0.0
    with torch.no_grad():
        trained = model(x)
    assert torch.equal(m.temperatures, torch.tensor([0.01, 10.0, 1.5]))  # as the official reinit_temp()
    torch.testing.assert_close(trained, evaluated, rtol=0, atol=0)
    # the gradient of a clamped temperature is that of the value used (not zero, as a clamp would give)
    with torch.no_grad():
        m.temperatures.copy_(torch.tensor([0.8, 12.0, 1.5]))
    F.cross_entropy(model.eval()(x), torch.tensor([0, 1])).backward()
    assert m.temperatures.grad[1] != 0


def test_only_the_method_and_the_head_get_gradients():
    bb = reference_backbone()
    model = randomised(vprompt.attach(bb, "gatevpt", num_prompts=NP)).train()
    frozen = {n: p.detach().clone() for n, p in bb.named_parameters() if not p.requires_grad}
    x, y = reference_inputs()
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is None for p in bb.parameters() if not p.requires_grad)
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        "method.prompts",
        "method.gate_logits",
        "method.temperatures",
        "backbone.model.head.weight",
        "backbone.model.head.bias",
    }
    assert all(bool(p.grad.abs().sum() > 0) for p in model.method.parameters())
    assert all(torch.equal(p, frozen[n]) for n, p in bb.named_parameters() if n in frozen)


@pytest.mark.numerics
def test_a_forward_from_the_cached_embed_site_is_the_forward(float64):
    """The frozen-prefix cache holds ``embed``: nothing trained acts before it."""
    bb = reference_backbone()
    model = randomised(vprompt.attach(bb, "gatevpt", num_prompts=NP))
    assert model.method.first_site(bb) == "embed"
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        raw = bb.site("embed").capture(bb.model, x)
        assert_exact(model.forward_from("embed", raw), model(x))


def test_the_cls_row_alone_is_used_and_timm_views_skip_the_prompts():
    bb = reference_backbone()
    model = randomised(vprompt.attach(bb, "gatevpt", num_prompts=NP))
    assert bb.cls_only_status() == "CLS row only"
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        inter = bb.model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        features = model.forward_features(x)
    assert [tuple(t.shape) for t in inter] == [(2, 16, 24)] * 3
    assert features.shape == (2, 17, 24)


def test_onnx_export_matches_the_model(tmp_path):
    out = tmp_path / "run"
    vprompt.train(**dict(TINY_RUN, epochs=1), method="gatevpt", method_options={"num_prompts": 2}, output=out)
    diff = export_onnx(out, tmp_path / "model.onnx")
    assert diff is not None and diff < 1e-4


# ------------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_gate_init_is_refused(value):
    bb = reference_backbone()
    with pytest.raises(MethodNotApplicable, match="gatevpt gate_init must be a finite number"):
        vprompt.attach(bb, "gatevpt", num_prompts=NP, gate_init=value)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bb.modules())


def test_dropout_out_of_range_is_refused():
    with pytest.raises(MethodNotApplicable, match=r"gatevpt dropout must be in \[0, 1\), got 1.0"):
        vprompt.attach(reference_backbone(), "gatevpt", num_prompts=NP, dropout=1.0)


def test_query_normalisation_refuses_the_temperature_only():
    kwargs = dict(TINY, qk_norm=True)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, **kwargs)
    bb = vprompt.Backbone(model, {"input_size": (3, 32, 32)}, "vit_tiny_qk_norm")
    with pytest.raises(
        MethodNotApplicable, match="gatevpt temperature: block 0 .*qk_norm.*temperature=false"
    ):
        vprompt.attach(bb, "gatevpt", num_prompts=NP)
    assert all(p.requires_grad for p in bb.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bb.modules())
    vprompt.attach(bb, "gatevpt", num_prompts=NP, temperature=False).unload()


def test_a_cnn_is_refused():
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=4, img_size=32)
    with pytest.raises(MethodNotApplicable, match="gatevpt .* family 'resnet'"):
        vprompt.attach(bb, "gatevpt", num_prompts=NP)
