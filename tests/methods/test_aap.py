"""Adaptive activation prompts: A + P + g(A) at one site of every family; sizes, zero init, locality,
the literal formula, the frozen-prefix cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_ap import FAMILIES

import vprompt
from numerics import assert_exact
from vprompt import MethodNotApplicable
from vprompt.engine.cache import cache_site
from vprompt.methods.aap import AdaptiveActivationPrompt

# (timm model, site, channels D, AP's trainable parameters for full / channel / spatial), 224 px
SIZES = [
    ("vit_base_patch16_224", "block.6", 768, (197 * 768, 768, 197)),
    ("resnet50", "stage.1", 512, (512 * 28 * 28, 512, 28 * 28)),
    ("resnet50", "stage.2", 1024, (1024 * 14 * 14, 1024, 14 * 14)),
    ("tf_efficientnet_lite0", "stage.3", 80, (80 * 14 * 14, 80, 14 * 14)),
]
# the numbers in aap.py's docstring: aap = ap + K² + 2·D·hidden (K = 3, hidden = 8)
EXPECTED_AAP = {
    ("vit_base_patch16_224", "block.6"): (163_593, 13_065, 12_494),
    ("resnet50", "stage.1"): (409_609, 8_713, 8_985),
    ("resnet50", "stage.2"): (217_097, 17_417, 16_589),
    ("tf_efficientnet_lite0", "stage.3"): (16_969, 1_369, 1_485),
}


@pytest.fixture(scope="module")
def big():
    cache = {}
    return lambda name: cache.setdefault(name, vprompt.backbone(name, pretrained=False, num_classes=10))


@pytest.mark.parametrize("name,site,dim,ap_counts", SIZES, ids=[f"{n}-{s}" for n, s, *_ in SIZES])
def test_parameter_counts_next_to_ap(big, name, site, dim, ap_counts):
    bb = big(name)
    for shape, ap_count, aap_count in zip(
        ("full", "channel", "spatial"), ap_counts, EXPECTED_AAP[name, site], strict=True
    ):
        ap = vprompt.attach(bb, "ap", site=site, shape=shape)
        assert ap.trainable_parameters(head=False) == ap_count
        ap.unload()
        aap = vprompt.attach(bb, "aap", site=site, shape=shape)
        assert aap.trainable_parameters(head=False) == aap_count == ap_count + 3 * 3 + 2 * dim * 8
        assert aap.trainable_parameters() == aap_count + bb.head.weight.numel() + bb.head.bias.numel()
        aap.unload()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_starts_as_the_backbone_and_the_generator_is_used(family):
    name, kwargs = FAMILIES[family]
    bb = vprompt.backbone(name, pretrained=False, num_classes=3, **kwargs).eval()
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        reference = bb(x)
    for site in bb.sites.values():
        model = vprompt.attach(bb, "aap", site=site.name, shape="channel")
        m = model.method
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference, rtol=0, atol=0)  # P = 0 and W2 = 0
            m.projector.fc2.weight.normal_()
            assert not torch.equal(model(x), reference), site.name  # g is used...
            g = m.generate(site.capture(bb.model, x))
            assert g.shape == (2, *site.shape)
            assert not torch.allclose(g[0], g[1])  # ...and depends on the input, unlike P
        model.unload()


def reference_generator(method: AdaptiveActivationPrompt, a: torch.Tensor, layout: str) -> torch.Tensor:
    """g(A) written out literally: per-position normalisation over channels, the shared kernel as a
    ``groups=D`` convolution with D copies of it, ``W2·ReLU(W1·)`` (eval: no dropout)."""
    k, pad = method.kernel, method.kernel.shape[-1] // 2
    w1, w2 = method.projector.fc1.weight, method.projector.fc2.weight

    def norm(v, axis):
        mean = v.mean(axis, keepdim=True)
        return (v - mean) / torch.sqrt(((v - mean) ** 2).mean(axis, keepdim=True) + 1e-5)

    def conv(maps):  # (B, D, H, W)
        d = maps.shape[1]
        return F.conv2d(maps, torch.stack([k[None]] * d), padding=pad, groups=d)

    def project(z, axis):  # channels on ``axis``
        z = z.movedim(axis, -1)
        return (torch.relu(z @ w1.T) @ w2.T).movedim(-1, axis)

    if layout == "nchw":
        return project(conv(norm(a, 1)), 1)
    if layout == "nhwc":
        return project(conv(norm(a, 3).permute(0, 3, 1, 2)), 1).permute(0, 2, 3, 1)
    p, (h, w) = method.prefix, method.grid
    z = norm(a, 2)
    prefix = z[:, :p] * k[pad, pad]  # a prefix token is its own 1×1 grid
    patches = conv(z[:, p:].reshape(a.shape[0], h, w, -1).permute(0, 3, 1, 2))
    return project(torch.cat([prefix, patches.permute(0, 2, 3, 1).reshape(a.shape[0], h * w, -1)], 1), 2)


CASES = [("vit", "block.1"), ("swin", "block.1"), ("resnet", "stage.1"), ("efficientnet", "stage.2")]


@pytest.mark.parametrize("family,site", CASES)
@pytest.mark.numerics
def test_generator_is_the_literal_formula(family, site, float64):
    name, kwargs = FAMILIES[family]
    bb = vprompt.backbone(name, pretrained=False, num_classes=3, **kwargs).eval()
    model = vprompt.attach(bb, "aap", site=site, kernel=3, hidden=4).eval()
    m = model.method
    torch.manual_seed(1)
    with torch.no_grad():
        m.kernel.normal_()
        m.projector.fc2.weight.normal_()
        m.prompt.normal_()
        a = bb.site(site).capture(bb.model, torch.randn(2, *bb.input_size))
        expected = reference_generator(m, a, bb.site(site).layout)
        assert_exact(m.generate(a), expected)
        # and the site's activation becomes A + P + g(A)
        assert_exact(m.add(a), a + m.prompt + expected)


#: grids of at least 5×5 at these sites, so that an off-centre neighbourhood is not the whole grid
LOCAL = {
    "vit": ("block.1", 70),
    "swin": ("block.0", 56),
    "resnet": ("stage.1", 64),
    "efficientnet": ("stage.1", 64),
}


@pytest.mark.parametrize("family", LOCAL)
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_a_position_sees_exactly_its_kxk_neighbourhood(family, kernel):
    """Changing the activation at one off-centre position changes g there and at its K×K neighbours only
    (so height, width and channels are where each layout keeps them); prefix tokens see only themselves."""
    name, kwargs = FAMILIES[family]
    site, size = LOCAL[family]
    bb = vprompt.backbone(name, pretrained=False, num_classes=3, **{**kwargs, "img_size": size}).eval()
    s = bb.site(site)
    m = vprompt.attach(bb, "aap", site=site, kernel=kernel).eval().method
    with torch.no_grad():
        m.kernel.uniform_(0.5, 1.5)  # every tap non-zero
        m.projector.fc2.weight.normal_()
        a = s.capture(bb.model, torch.randn(1, *bb.input_size))
        if s.layout == "tokens":  # view the patch tokens as (1, h, w, D)
            grid = lambda t: t[:, s.prefix_tokens :].unflatten(1, s.grid)  # noqa: E731
        elif s.layout == "nchw":
            grid = lambda t: t.permute(0, 2, 3, 1)  # noqa: E731
        else:
            grid = lambda t: t  # noqa: E731
        h, w = grid(a).shape[1:3]
        assert min(h, w) >= 5
        i, j = 1, w - 2  # off-centre and off-diagonal: a transposed grid would change other positions
        b = a.clone()
        grid(b)[0, i, j] += torch.linspace(1, 3, grid(b).shape[-1])  # not a constant shift: LN would hide it
        changed = (grid(m.generate(b)) - grid(m.generate(a))).abs().amax(-1)[0] > 1e-6
        r = kernel // 2
        expected = torch.zeros(h, w, dtype=torch.bool)
        expected[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1] = True
        assert torch.equal(changed, expected)
        if s.layout == "tokens":
            assert torch.equal(m.generate(b)[:, : s.prefix_tokens], m.generate(a)[:, : s.prefix_tokens])


def test_the_first_step_trains_w2_and_the_prompt_then_everything():
    name, kwargs = FAMILIES["resnet"]
    bb = vprompt.backbone(name, pretrained=False, num_classes=3, **kwargs)
    model = vprompt.attach(bb, "aap", site="stage.1", dropout=0.0)
    m = model.method
    x, y = torch.randn(4, *bb.input_size), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    grads = []
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model.train()(x), y).backward()
        grads.append({n: float(p.grad.abs().sum()) for n, p in m.named_parameters()})
        opt.step()
    assert set(grads[0]) == {"prompt", "kernel", "projector.fc1.weight", "projector.fc2.weight"}
    assert grads[0]["prompt"] > 0 and grads[0]["projector.fc2.weight"] > 0
    assert grads[0]["kernel"] == grads[0]["projector.fc1.weight"] == 0  # behind the zero W2
    assert all(v > 0 for v in grads[1].values())


def test_dropout_only_in_training():
    name, kwargs = FAMILIES["vit"]
    bb = vprompt.backbone(name, pretrained=False, num_classes=3, **kwargs)
    model = vprompt.attach(bb, "aap", site="block.0", dropout=0.5)
    with torch.no_grad():
        model.method.projector.fc2.weight.normal_()
        x = torch.randn(2, *bb.input_size)
        assert torch.equal(model.eval()(x), model(x))
        torch.manual_seed(0)
        first = model.train()(x)
        assert not torch.equal(first, model(x))


def test_frozen_prefix_cache_check_agrees():
    name, kwargs = FAMILIES["vit"]
    bb = vprompt.backbone(name, pretrained=False, num_classes=3, **kwargs)
    model = vprompt.attach(bb, "aap", site="block.1")
    assert model.method.first_site(bb) == "block.1"
    site, why = cache_site(model)
    assert site == "block.1" and why == "activations at 'block.1' computed once"
    # the engine's check is real: a generator whose input depended on a trained tensor is refused
    model.method.first_site = lambda backbone: "pre_logits"
    site, why = cache_site(model)
    assert site is None and "something trained acts before site 'pre_logits'" in why
    x = torch.randn(3, *bb.input_size)
    del model.method.first_site
    with torch.no_grad():
        model.method.projector.fc2.weight.normal_()
        cached = bb.forward_from("block.1", bb.site("block.1").capture(bb.model, x))
        torch.testing.assert_close(cached, model.eval()(x), rtol=0, atol=0)


def test_clear_errors():
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=3, img_size=32)
    with pytest.raises(MethodNotApplicable, match="aap needs a site; .* has: input, embed"):
        vprompt.attach(bb, "aap")
    with pytest.raises(MethodNotApplicable, match="aap needs an odd kernel .*, got kernel=2"):
        vprompt.attach(bb, "aap", site="stage.1", kernel=2)
    with pytest.raises(MethodNotApplicable, match="aap hidden=0 is out of range: it must be from 1 to"):
        vprompt.attach(bb, "aap", site="stage.1", hidden=0)
    with pytest.raises(MethodNotApplicable, match=r"dropout must be in \[0, 1\), got 1.0"):
        vprompt.attach(bb, "aap", site="stage.1", dropout=1.0)
    with pytest.raises(KeyError, match="no site 'block.99'"):
        vprompt.attach(bb, "aap", site="block.99")
    with pytest.raises(ValueError, match="its options are: site, shape, hidden, kernel, dropout"):
        vprompt.attach(bb, "aap", layer=3)
    assert all(p.requires_grad for p in bb.parameters())  # a failed attach leaves the backbone as it was
    assert not bb.site("stage.1").module._forward_hooks
