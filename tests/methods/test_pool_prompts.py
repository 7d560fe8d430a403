"""pool_prompts: an average-pooling head pools the prompt tokens' outputs with the patch tokens, as the
official VPT/VAPT/GateVPT/E²VPT code does for MAE (``VIT_POOL_TYPE: original``); off: the patch tokens
only (``img_pool``); CLS pooling is unaffected."""

from __future__ import annotations

import pytest
import torch

import vprompt
from numerics import assert_exact
from vprompt import MethodNotApplicable
from vprompt.cli.train import method_options
from vprompt.methods import METHODS

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=16, num_heads=2)
NP = 3
#: the token-prompt methods and tiny options (every one has pool_prompts)
OPTIONS = {
    "vpt-shallow": dict(num_prompts=NP),
    "vpt-deep": dict(num_prompts=NP),
    "vapt": dict(num_prompts=NP),
    "gatevpt": dict(num_prompts=NP),
    "e2vpt": dict(num_prompts=NP, kv_prompts=2),
}


def vit(**extra) -> vprompt.Backbone:
    """CLS token, 4×4 grid of 8-px patches, 2 blocks."""
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=4, **TINY, **extra)


def vit_avg() -> vprompt.Backbone:
    """timm's average pooling of the tokens after the CLS token, then ``fc_norm`` (no final norm)."""
    return vit(global_pool="avg", fc_norm=True)


def mae() -> vprompt.Backbone:
    """``mae:``: pooled as the official code pools MAE (mean after CLS, a new ``fc_norm``)."""
    return vprompt.backbone("mae:vit_base_patch16_224", pretrained=False, num_classes=4, **TINY)


def prompted(bb: vprompt.Backbone, method: str, seed: int = 0, **options) -> vprompt.TunedModel:
    """``method`` on ``bb`` with every trainable parameter (prompts, gates, head) drawn at random."""
    torch.manual_seed(seed)
    model = vprompt.attach(bb, method, **OPTIONS[method], **options).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.5)
    return model


def last_block_output(bb: vprompt.Backbone, model: vprompt.TunedModel, x: torch.Tensor) -> torch.Tensor:
    """The last block's own output, prompts included (a torch hook put before the method's step)."""
    seen = []
    handle = bb.model.blocks[-1].register_forward_hook(
        lambda _m, _a, out: seen.append(out.clone()), prepend=True
    )
    bb.cls_only_last_block = False  # a torch hook on the last block makes it step aside anyway
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        bb.cls_only_last_block = True
    return seen[0]


@pytest.mark.numerics
@pytest.mark.parametrize("factory", [vit_avg, mae])
@pytest.mark.parametrize("method", OPTIONS)
def test_average_pooling_pools_the_prompts_as_the_official_code(method, factory, float64):
    bb = factory()
    x = torch.randn(2, *bb.input_size)
    head = bb.model
    results = {}
    for choice in (None, True, False):
        model = prompted(bb, method, pool_prompts=choice)
        assert model.method.geometry.pool_prompts is (choice is not False)
        tokens = last_block_output(bb, model, x)  # (B, 1 + N_p + 16, D): the prompts are still there
        assert tokens.shape[1] == 1 + NP + 16
        with torch.no_grad():
            logits = model(x)
            pre = model.forward_head(model.forward_features(x), pre_logits=True)
        # by hand: 'original' averages every token after CLS (prompts and patches), 'img_pool' the patches
        kept = tokens[:, 1:] if choice is not False else tokens[:, 1 + NP :]
        want = head.fc_norm(head.norm(kept).mean(dim=1))
        assert_exact(pre, want, f"{method} pool_prompts={choice}: pooled features")
        assert_exact(logits, head.head(want), f"{method} pool_prompts={choice}: logits")
        results[choice] = logits
        model.unload()
    assert torch.equal(results[None], results[True])  # the default follows the official code
    assert (results[True] - results[False]).abs().max() > 1e-3  # and the two poolings differ


@pytest.mark.parametrize("pooling", ["max", "avgmax"])
def test_other_reductions_of_the_patch_tokens_pool_them_too(pooling, float64):
    """In float64: the features may come from a forward that skips unread rows in other blocks."""
    bb = vit(global_pool=pooling)
    model = prompted(bb, "vpt-deep")
    x = torch.randn(2, *bb.input_size)
    tokens = last_block_output(bb, model, x)
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
    assert_exact(features, bb.model.norm(tokens))
    kept = bb.model.norm(tokens)[:, 1:]
    want = kept.amax(dim=1) if pooling == "max" else 0.5 * (kept.amax(dim=1) + kept.mean(dim=1))
    assert_exact(pre, bb.model.fc_norm(want))


@pytest.mark.parametrize("method", OPTIONS)
def test_cls_pooling_is_bit_for_bit_unchanged_by_the_option(method):
    bb = vit()
    x = torch.randn(2, *bb.input_size)
    outputs = []
    for choice in (None, True, False):
        model = prompted(bb, method, pool_prompts=choice)
        assert model.method.geometry.pool_prompts is False  # CLS pooling: the prompts are removed
        with torch.no_grad():
            outputs.append((model(x), model.forward_features(x)))
        assert bb.cls_only_status() == "CLS row only"  # the last block still computes the CLS row alone
        model.unload()
    for logits, features in outputs[1:]:
        assert torch.equal(logits, outputs[0][0])
        assert torch.equal(features, outputs[0][1])
    assert outputs[0][1].shape[1] == 1 + 16


@pytest.mark.parametrize("method", ["vpt-deep", "e2vpt"])
def test_average_pooling_computes_every_row_of_the_last_block(method):
    bb = vit_avg()
    model = prompted(bb, method)
    x = torch.randn(2, *bb.input_size)
    assert "pools 'avg'" in bb.cls_only_status()  # the CLS-only last block steps aside
    with torch.no_grad():
        on = model(x)
        bb.cls_only_last_block = False
        off = model(x)
    assert torch.equal(on, off)


@pytest.mark.parametrize("method", OPTIONS)
def test_parameter_counts_do_not_depend_on_the_option(method):
    bb = vit_avg()
    counts = set()
    for choice in (None, True, False):
        model = vprompt.attach(bb, method, **OPTIONS[method], pool_prompts=choice)
        counts.add((model.trainable_parameters(head=False), model.trainable_parameters()))
        model.unload()
    assert len(counts) == 1


@pytest.mark.parametrize("choice", [None, False, True])
def test_save_and_load_keep_the_option(tmp_path, choice):
    bb = vit_avg()
    model = prompted(bb, "vapt", pool_prompts=choice)
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        before = model(x)
    model.save_pretrained(tmp_path)
    model.unload()
    loaded = vprompt.load_adapter(tmp_path, bb).eval()
    assert loaded.method.config.pool_prompts is choice
    assert loaded.method.geometry.pool_prompts is (choice is not False)
    with torch.no_grad():
        assert torch.equal(loaded(x), before)


def test_forward_intermediates_final_features_keep_what_the_head_pools():
    bb = vit_avg()
    model = prompted(bb, "vpt-deep")
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        features = model.forward_features(x)
        final, inter = bb.model.forward_intermediates(x, output_fmt="NLC")
        last, _ = bb.model.forward_intermediates(x, indices=[-1], stop_early=True, output_fmt="NLC")
        early, first = bb.model.forward_intermediates(x, indices=[0], stop_early=True, output_fmt="NLC")
        logits = model(x)
    assert features.shape[1] == 1 + NP + 16
    torch.testing.assert_close(final, features, rtol=0, atol=0)
    torch.testing.assert_close(last, features, rtol=0, atol=0)
    torch.testing.assert_close(model.forward_head(final), logits, rtol=0, atol=0)
    assert [y.shape[1] for y in inter] == [16, 16] and first[0].shape[1] == 16  # intermediates: patches only
    assert early.shape[1] == 1 + 16  # stopped before the last block: the prompts are removed here


def test_every_token_prompt_method_has_the_option():
    for name in OPTIONS:
        assert METHODS[name].config_class().pool_prompts is None


def test_bad_pool_prompts_are_refused():
    with pytest.raises(MethodNotApplicable, match=r"vpt-deep pool_prompts must be true, false or null"):
        vprompt.attach(vit_avg(), "vpt-deep", pool_prompts="yes")
    attention_pooled = vit(global_pool="map")
    with pytest.raises(MethodNotApplicable, match=r"pool_prompts: backbone .* pools 'map'"):
        vprompt.attach(attention_pooled, "vapt", pool_prompts=True)
    model = vprompt.attach(attention_pooled, "vapt")  # unset: the prompts are removed, as before
    assert model.method.geometry.pool_prompts is False


def test_the_option_on_the_command_line():
    for method in OPTIONS:
        assert method_options(method, ["--no-pool-prompts"]) == {"pool_prompts": False}
        assert method_options(method, ["--pool-prompts"]) == {"pool_prompts": True}
        assert method_options(method, []) == {}  # unset: the config's None, follow the backbone
