"""E²VPT: the official code's numbers, parameter counts, the key-value wrapper, pruning and rewinding."""

from __future__ import annotations

import json
from pathlib import Path

import e2vpt_reference as ref
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention

import vprompt
from numerics import EXACT_RTOL, assert_exact
from tiny_runs import TINY_CLI
from vprompt import MethodNotApplicable
from vprompt.backbones.cls_only import why_not
from vprompt.cli import main
from vprompt.methods.e2vpt import KVPromptAttention, importance, prune_grid, prune_options

FIXTURE = Path(__file__).parent / "fixtures" / "e2vpt_reference.json"
TINY_VIT = dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2)


def vit(num_classes=4, **extra) -> vprompt.Backbone:
    """A 4×4 grid of 8-px patches + CLS, 3 blocks of width 24, 2 heads of 12."""
    return vprompt.backbone(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **{**TINY_VIT, **extra}
    )


@pytest.fixture(scope="module")
def official() -> dict:
    return json.loads(FIXTURE.read_text())


def relative(got: torch.Tensor, want, what: str) -> None:
    want = torch.tensor(want, dtype=torch.float64)
    assert got.shape == want.shape, what
    error = float((got.detach() - want).abs().max() / want.abs().max())
    assert error <= EXACT_RTOL, f"{what}: max |vprompt − official| / max |official| = {error:.3g}"


# ------------------------------------------------------------------------ the official code's numbers


def test_the_fixture_records_its_provenance(official):
    assert official["commit"] == {"ChengHan111/E2VPT": "7a66e75eef6b7e15df83463d31b60eba5938d208"}
    assert official["computed_with"]["dtype"] == "float64"
    assert set(official["cases"]) == set(ref.CASES)


@pytest.mark.numerics
@pytest.mark.parametrize("cls_only", [True, False], ids=["cls-row", "all-rows"])
@pytest.mark.parametrize("case", list(ref.CASES))
def test_logits_and_gradients_equal_the_official_code(official, case, cls_only, float64):
    """Eval mode, float64 (weights and inputs drawn in float64: the same on every CPU kernel): the logits,
    the loss and every gradient value (per block) equal the official ``PromptedVisionTransformer_Prompt_VK``'s
    on the same weights and prompts."""
    want = official["cases"][case]
    bb = ref.reference_backbone()
    bb.cls_only_last_block = cls_only
    model = ref.reference_model(bb, case)
    images, labels = ref.reference_inputs()
    assert images.dtype == bb.head.weight.dtype == model.method.prompts.dtype == torch.float64
    logits = model(images)
    assert bb.cls_only_status() == ("CLS row only" if cls_only else "all tokens: cls_only_last_block is off")
    loss = F.cross_entropy(logits, labels)
    relative(logits, want["logits"], "logits")
    assert abs(float(loss.detach()) - want["loss"]) <= EXACT_RTOL * want["loss"]
    m = model.method
    named = {"prompts": m.prompts, "kv": m.kv, "head.weight": bb.head.weight, "head.bias": bb.head.bias}
    if m.config.learn_masks:
        named.update(token_mask=m.token_mask, segment_mask=m.segment_mask)
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values())), strict=True))
    assert set(want["grads"]) == {f"{n}.{i}" for n in ("prompts", "kv") for i in range(3)} | {
        n for n in named if n not in ("prompts", "kv")
    }
    for name, values in want["grads"].items():
        base, _, layer = name.partition(".")
        grad = grads[base][int(layer)] if base in ("prompts", "kv") else grads[name]
        assert float(torch.tensor(values).abs().max()) > 0, f"{name}: a vacuous check"
        relative(grad, values, f"gradient of {name}")


@pytest.mark.numerics
def test_importance_scores_are_the_official_mask_gradients(official, float64):
    """The official score of one batch is the gradient of the loss w.r.t. the (learned) masks; over a
    loader it is the mean of the batches' gradients."""
    want = official["cases"]["masks"]["grads"]
    bb = ref.reference_backbone()
    model = ref.reference_model(bb, "masks").train()
    images, labels = ref.reference_inputs()
    batch = (images, labels)
    tokens, segments = importance(model, [batch, batch])
    relative(tokens, want["token_mask"], "token scores")
    relative(segments, want["segment_mask"], "segment scores")
    assert model.training  # the mode is restored
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated on the parameters


def test_importance_without_learned_masks_scores_masks_of_ones(float64):
    """``∂L/∂ρ_k`` at ρ = 1 is ``Σ_l Σ_d P[l,k,d] · ∂L/∂P[l,k,d]`` (and per segment, over its dims)."""
    bb = vit()
    model = vprompt.attach(bb, "e2vpt", num_prompts=3, kv_prompts=2, segments=4)
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    tokens, segments = importance(model, [(x, y)])
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), [model.method.prompts])
    product = model.method.prompts.detach() * grad  # (L, N, D)
    assert_exact(tokens, product.sum(dim=(0, 2)), "token scores")
    by_segment = product.sum(0).view(3, 24 // 4, 4).sum(1)  # dim d is in segment d % R
    assert_exact(segments, by_segment, "segment scores")


def test_the_pruning_grid_is_the_official_one(official):
    for key, want in official["pruning"]["grids"].items():
        n, r = map(int, key.split("x"))
        assert prune_grid(n, r) == (want["tokens"], want["segments"]), key


def test_pruned_prompts_and_segments_are_the_official_choice(official):
    """The official code masks the lowest-scored prompts and, per prompt, the lowest-scored segments."""
    grads = official["cases"]["masks"]["grads"]
    tokens, segments = torch.tensor(grads["token_mask"]), torch.tensor(grads["segment_mask"])
    steps = official["pruning"]["masks_case"]
    pairs = [(t, gone, s, pieces) for t, gone in steps["tokens"] for s, pieces in steps["segments"]]
    for t, gone, s, pieces in pairs:
        options = prune_options(tokens, segments, t, s)
        assert options["prune_tokens"] == gone
        want = [16 * int(k) + j for k, js in pieces.items() if int(k) not in gone for j in js]
        assert options["prune_segments"] == sorted(want), (t, s)


# ---------------------------------------------------------------------------------- parameter counts


@pytest.fixture(scope="module")
def vit_b16():
    return vprompt.backbone("vit_base_patch16_224", pretrained=False, num_classes=100)


HALF = [16 * k + j for k in (0, 2, 3, 5, 6, 8, 9) for j in range(8)]  # 8 of 16 segments of each kept prompt


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, 92_160 + 46_080),
        ({"share_kv": False}, 92_160 + 92_160),
        ({"learn_masks": True}, 92_160 + 46_080 + 10 + 160),
        ({"prune_tokens": [0, 9], "prune_segments": [16 + 3, 16 + 5]}, 12 * (8 * 768 - 2 * 48) + 46_080),
        ({"prune_tokens": [1, 4, 7], "prune_segments": HALF}, 32_256 + 46_080),  # docs/methods.md
    ],
    ids=["defaults", "separate-kv", "learn-masks", "pruned", "pruned-half"],
)
def test_parameter_counts_vit_b16(vit_b16, options, expected):
    """From the architecture: L·N_p·D visual + L·H·M·d_h (×2 unshared) key-value + the 100-class head."""
    blocks = vit_b16.model.blocks
    depth, dim = len(blocks), vit_b16.model.embed_dim
    heads, head_dim = blocks[0].attn.num_heads, blocks[0].attn.head_dim
    model = vprompt.attach(vit_b16, "e2vpt", **options)
    try:
        c = model.method.config
        kept = c.num_prompts - len(c.prune_tokens)
        visual = depth * (kept * dim - len(c.prune_segments) * dim // c.segments)
        kv = depth * heads * c.kv_prompts * head_dim * (1 if c.share_kv else 2)
        masks = c.num_prompts * (1 + c.segments) if c.learn_masks else 0
        head = dim * 100 + 100
        assert model.trainable_parameters(head=False) == visual + kv + masks == expected
        assert model.trainable_parameters() == expected + head == expected + 76_900
    finally:
        model.unload()


def test_parameter_counts_tiny_vit():
    bb = vit()
    model = vprompt.attach(bb, "e2vpt", num_prompts=3, kv_prompts=2)
    assert model.method.prompts.shape == (3, 3, 24) and model.method.kv.shape == (3, 1, 2, 2, 12)
    assert model.trainable_parameters(head=False) == 3 * 3 * 24 + 3 * 2 * 2 * 12 == 360
    assert model.trainable_parameters() == 360 + 24 * 4 + 4
    model.unload()
    model = vprompt.attach(
        bb, "e2vpt", num_prompts=4, kv_prompts=2, segments=4, prune_tokens=[1], prune_segments=[2, 13]
    )
    # 3 prompts stay, two of them lose one segment of 24/4 = 6 dims
    assert model.method.prompts.shape == (3, 3 * 24 - 2 * 6)
    assert model.trainable_parameters(head=False) == 3 * (3 * 24 - 12) + 144


# ------------------------------------------------------------------------------- the attention wrapper


def test_the_wrapper_keeps_timm_keys_and_detach_puts_timms_attention_back(float64):
    bb = vit()
    originals = [block.attn for block in bb.model.blocks]
    keys = list(bb.state_dict())
    model = vprompt.attach(bb, "e2vpt", num_prompts=3, kv_prompts=2)
    assert all(type(block.attn) is KVPromptAttention for block in bb.model.blocks)
    assert list(bb.state_dict()) == keys  # same children, same names: no new backbone keys
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "method.prompts",
        "method.kv",
        "backbone.model.head.weight",
        "backbone.model.head.bias",
    }
    model.unload()
    assert all(
        block.attn is a and type(a) is Attention for block, a in zip(bb.model.blocks, originals, strict=True)
    )


def test_the_wrapper_without_prompts_rows_is_timms_attention(float64):
    """With zero key-value rows the wrapper computes exactly timm's forward (fused and unfused)."""
    bb = vit()
    attn = bb.model.blocks[0].attn
    empty = torch.zeros(2, attn.num_heads, 0, attn.head_dim)
    wrapper = KVPromptAttention(attn, lambda batch, dtype: (empty[:batch], empty[:batch]))
    x = torch.randn(2, 17, 24)
    for fused in (True, False):
        attn.fused_attn = wrapper.fused_attn = fused
        assert_exact(wrapper(x), attn(x), f"fused={fused}")


def test_key_value_prompts_change_the_attention_exactly_as_extra_keys(float64):
    """softmax over [prompt keys, token keys] weighting [prompt values, token values], per head."""
    bb = vit()
    model = vprompt.attach(bb, "e2vpt", num_prompts=1, kv_prompts=2, share_kv=False)
    attn = bb.model.blocks[1].attn
    x = torch.randn(2, 5, 24)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 12).permute(2, 0, 3, 1, 4)
    pk, pv = model.method.kv[1]
    k, v = torch.cat([pk.expand(2, -1, -1, -1), k], 2), torch.cat([pv.expand(2, -1, -1, -1), v], 2)
    weights = (q @ k.transpose(-1, -2) / 12**0.5).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 24))
    assert_exact(attn(x), expected, "attention with key-value prompts")


def test_the_cls_only_last_block_includes_the_key_value_prompts(float64):
    bb = vit()
    model = vprompt.attach(bb, "e2vpt", num_prompts=2, kv_prompts=3)
    assert why_not(bb.model) is None
    x = torch.randn(2, 3, 32, 32)
    short = model(x)
    bb.cls_only_last_block = False
    assert_exact(short, model(x), "logits")


# ------------------------------------------------------------------------------ pruning and rewinding


def pruned_pair(**extra):
    """An unpruned model (4 prompts, R=4) and its pruned version attached under the same seed."""
    options = dict(num_prompts=4, kv_prompts=2, segments=4, **extra)
    torch.manual_seed(0)
    full = vprompt.attach(vit(), "e2vpt", **options)
    torch.manual_seed(0)
    pruned = vprompt.attach(vit(), "e2vpt", **options, prune_tokens=[1], prune_segments=[2, 12, 13])
    with torch.no_grad():
        pruned.backbone.model.load_state_dict(full.backbone.model.state_dict())
    return full, pruned


def test_rewinding_starts_the_kept_prompts_from_their_initial_values(float64):
    full, pruned = pruned_pair()
    dense = torch.stack([pruned.method.visual_prompts(layer) for layer in range(3)])
    kept = full.method.prompts.detach()[:, [0, 2, 3]].clone()
    kept[:, 0, 2::4] = 0  # segment 2 of prompt 0: dims 2, 6, 10, ...
    kept[:, 2, 0::4] = kept[:, 2, 1::4] = 0  # segments 0 and 1 of prompt 3
    assert torch.equal(dense, kept)
    assert torch.equal(pruned.method.kv, full.method.kv)


def test_a_pruned_prompt_contributes_nothing(float64):
    """Masked to zero (the official formulation) its gradient is exactly zero; removed (vprompt's pruned
    model) the logits equal the masked model's without its token, and only the kept entries train."""
    full, pruned = pruned_pair(learn_masks=False)
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    # masks of the pruning applied to the unpruned model: the pruned entries get no gradient
    tokens, segments = torch.ones(4), torch.ones(4, 4)
    tokens[1], segments[0, 2], segments[3, 0], segments[3, 1] = 0, 0, 0, 0
    full.method._score_masks = (tokens, segments)
    (grad,) = torch.autograd.grad(F.cross_entropy(full(x), y), [full.method.prompts])
    zeroed = (tokens[:, None] * segments.repeat(1, 6)).expand_as(grad) == 0
    assert zeroed.sum() == 3 * (24 + 3 * 6) and bool((grad[zeroed] == 0).all())
    assert bool((grad[~zeroed] != 0).all())
    full.method._score_masks = None
    # removing prompt 1 and zeroing the segments: the same logits as a 3-prompt model holding the rest
    three = vprompt.attach(vit(), "e2vpt", num_prompts=3, kv_prompts=2)
    with torch.no_grad():
        three.backbone.model.load_state_dict(full.backbone.model.state_dict())
        three.method.kv.copy_(full.method.kv)
        three.method.prompts.copy_(torch.stack([pruned.method.visual_prompts(layer) for layer in range(3)]))
    assert_exact(pruned.eval()(x), three.eval()(x), "pruned vs removed")
    (grad,) = torch.autograd.grad(F.cross_entropy(pruned(x), y), [pruned.method.prompts])
    assert grad.shape == (3, 3 * 24 - 3 * 6) and bool((grad != 0).all())


def test_pruned_models_round_trip_through_save_and_load(tmp_path):
    _, pruned = pruned_pair()
    pruned.save_pretrained(tmp_path)
    loaded = vprompt.load_adapter(tmp_path, vit())
    with torch.no_grad():
        loaded.backbone.model.load_state_dict(pruned.backbone.model.state_dict())
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(loaded(x), pruned(x))
    assert loaded.method.config.prune_tokens == [1] and loaded.method.config.prune_segments == [2, 12, 13]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"prune_tokens": [4]}, "prune_tokens must be distinct indices from 0 to 3, got [4]"),
        ({"prune_tokens": [1, 1]}, "prune_tokens must be distinct indices from 0 to 3, got [1, 1]"),
        ({"prune_tokens": [0, 1, 2, 3]}, "removes all 4 visual prompts; keep at least one"),
        ({"prune_segments": [16]}, "prune_segments must be distinct indices from 0 to 15, got [16]"),
        ({"prune_tokens": [1], "prune_segments": [5]}, "segments of prompts [1], which prune_tokens removes"),
        (
            {"prune_segments": [4, 5, 6, 7]},
            "zeroes every segment of prompts [1]: prune them with prune_tokens",
        ),
        ({"learn_masks": True, "prune_tokens": [0]}, "learn_masks is pruning's first stage"),
        ({"segments": 5, "learn_masks": True}, "segments=5 must divide the embedding size 24"),
        ({"kv_prompts": 0}, "kv_prompts=0 is out of range: it must be from 1 to 68"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ],
)
def test_bad_options_are_refused_at_attach(options, message):
    bb = vit()
    keys = list(bb.state_dict())
    with pytest.raises(MethodNotApplicable) as error:
        vprompt.attach(bb, "e2vpt", **{"num_prompts": 4, "segments": 4, **options})
    assert message in str(error.value)
    assert list(bb.state_dict()) == keys and all(type(b.attn) is Attention for b in bb.model.blocks)


def test_e2vpt_needs_timms_attention():
    with pytest.raises(MethodNotApplicable, match="needs a token sequence|inserts prompt tokens"):
        vprompt.attach(vprompt.backbone("resnet18", pretrained=False, num_classes=4, img_size=32), "e2vpt")


# ------------------------------------------------------------- the two stages on the CLI, then ONNX


def test_the_two_stage_procedure_on_the_cli(tmp_path):
    """Stage 1 trains learned masks; the scores pick what to prune; stage 2 (same seed) rewinds."""
    common = ["train", *TINY_CLI, "--epochs", "1", "--train-size", "16", "--eval-size", "8"]
    common += ["--method", "e2vpt", "--num-prompts", "4", "--segments", "4"]
    assert main([*common, "--learn-masks", "--output", str(tmp_path / "stage1")]) == 0
    model = vprompt.load_adapter(tmp_path / "stage1")
    # TINY's ViT-Tiny: 12 blocks of width 192, 3 heads of 64; masks 4 + 4×4
    assert model.trainable_parameters(head=False) == 12 * 4 * 192 + 12 * 3 * 5 * 64 + 4 + 16
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    tokens, segments = importance(model, [(x, y)])
    options = prune_options(tokens, segments, tokens=1, segments=2)
    stage2 = [
        *common,
        "--prune-tokens",
        *map(str, options["prune_tokens"]),
        "--prune-segments",
        *map(str, options["prune_segments"]),
        "--output",
        str(tmp_path / "stage2"),
    ]
    assert main(stage2) == 0
    pruned = vprompt.load_adapter(tmp_path / "stage2")
    assert pruned.method.config.prune_tokens == options["prune_tokens"]
    assert pruned.trainable_parameters(head=False) == 12 * (3 * 192 - 3 * 2 * 48) + 12 * 3 * 5 * 64
    # the pruned model (a scatter of its kept entries) exports to ONNX and agrees with PyTorch
    pytest.importorskip("onnx")
    from vprompt.engine.inference import export_onnx

    difference = export_onnx(tmp_path / "stage2", tmp_path / "m.onnx")
    assert difference is not None and difference < 1e-4
