"""timm's entry points on a prompted ViT (VPT, VAPT): no prompt token reaches the user, but in the features
an average-pooling head pools (pool_prompts)."""

from __future__ import annotations

import pytest
import torch
from test_vpt_vapt import BACKBONES, METHODS, NP, blocks, capture, drop, prefix_of

from vprompt.model import TunedModel


def prompted(method, factory):
    """A prompted tiny ViT whose prompts are random (so they change every block's output)."""
    bb = factory().eval()
    seen, handles = capture(bb)  # registered before the method: raw block outputs with prompts
    model = TunedModel(bb, METHODS[method]()).eval()
    with torch.no_grad():
        for p in model.method.parameters():
            p.normal_(0, 0.5)
    return bb, model, seen, handles


def grid_of(bb):
    return bb.site("embed").grid


@pytest.mark.parametrize("factory", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_forward_intermediates_strips_the_prompts(method, factory):
    bb, model, seen, handles = prompted(method, factory)
    x = torch.randn(2, *bb.input_size)
    prefix, (h, w), depth = prefix_of(bb), grid_of(bb), len(blocks(bb))
    dim = bb.site("embed").shape[-1]
    with torch.no_grad():
        bare = type(bb.model).forward_intermediates(bb.model, x, output_fmt="NLC", intermediates_only=True)
        nlc = bb.model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        raw = {i: seen["raw"][f"block.{i}"] for i in range(depth)}
        nchw = bb.model.forward_intermediates(x, intermediates_only=True)
        final, normed = bb.model.forward_intermediates(x, norm=True, output_fmt="NLC")
        features = bb.model.forward_features(x)
        with_prefix = bb.model.forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
        as_dict = bb.model.forward_intermediates(x, output_dict=True, return_prefix_tokens=True)
        layers = bb.model.get_intermediate_layers(x, n=2, reshape=True)
    # timm's own method on the prompted model shows the bug this module fixes
    assert bare[0].shape[1] == h * w + NP
    assert len(nlc) == len(nchw) == depth
    for i in range(depth):
        own = drop(raw[i], prefix, NP)
        assert own.shape[1] == prefix + h * w
        torch.testing.assert_close(nlc[i], own[:, prefix:], rtol=0, atol=0)
        assert nchw[i].shape == (2, dim, h, w)
        torch.testing.assert_close(nchw[i], own[:, prefix:].reshape(2, h, w, dim).permute(0, 3, 1, 2))
        torch.testing.assert_close(normed[i], bb.model.norm(own)[:, prefix:])
        if prefix:
            spatial, prefix_tokens = with_prefix[i]
            torch.testing.assert_close(spatial, nchw[i], rtol=0, atol=0)
            torch.testing.assert_close(prefix_tokens, own[:, :prefix], rtol=0, atol=0)
        else:
            torch.testing.assert_close(with_prefix[i], nchw[i], rtol=0, atol=0)
    torch.testing.assert_close(final, features, rtol=0, atol=0)
    pooled = model.method.geometry.pool_prompts  # the head pools them: forward_features keeps them
    assert features.shape == (2, prefix + (NP if pooled else 0) + h * w, dim)
    assert set(as_dict) == (
        {"image_intermediates", "image_features"} | ({"image_intermediates_prefix"} if prefix else set())
    )
    torch.testing.assert_close(as_dict["image_features"], features, rtol=0, atol=0)
    assert [tuple(y.shape) for y in layers] == [(2, dim, h, w)] * 2
    torch.testing.assert_close(layers[-1], nchw[-1], rtol=0, atol=0)
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("factory", BACKBONES[:3])
@pytest.mark.parametrize("method", METHODS)
def test_stop_early_features_and_head(method, factory):
    bb, model, seen, handles = prompted(method, factory)
    x = torch.randn(2, *bb.input_size)
    prefix, (h, w) = prefix_of(bb), grid_of(bb)
    with torch.no_grad():
        final, inter = bb.model.forward_intermediates(x, indices=[0], stop_early=True, output_fmt="NLC")
        block0 = drop(seen["raw"]["block.0"], prefix, NP)
        logits = model(x)
        features = model.forward_features(x)
        head = model.forward_head(features)
        pre_logits = model.forward_head(features, pre_logits=True)
    assert final.shape == (2, prefix + h * w, block0.shape[-1])
    torch.testing.assert_close(final, bb.model.norm(block0))  # the last block never ran: stripped here
    torch.testing.assert_close(inter[0], block0[:, prefix:], rtol=0, atol=0)
    torch.testing.assert_close(head, logits, rtol=0, atol=0)
    torch.testing.assert_close(bb.model.head(pre_logits), logits, rtol=0, atol=0)
    pooled = model.method.geometry.pool_prompts  # the head pools them: forward_features keeps them
    assert features.shape[1] == final.shape[1] + (NP if pooled else 0)  # the backbone's own token positions
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("method", METHODS)
def test_pruning_is_refused_and_detach_restores_timm(method):
    bb, model, _, handles = prompted(method, BACKBONES[2])  # registers
    with pytest.raises(
        RuntimeError, match=f"prune_intermediate_layers is refused while {method} is attached"
    ):
        bb.model.prune_intermediate_layers(indices=1)
    assert len(blocks(bb)) == 2
    model.unload()
    assert "forward_intermediates" not in vars(bb.model)
    assert "prune_intermediate_layers" not in vars(bb.model)
    x = torch.randn(1, *bb.input_size)
    with torch.no_grad():
        inter = bb.model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
    assert inter[0].shape[1] == bb.site("embed").shape[0] - prefix_of(bb)
    for handle in handles:
        handle.remove()
