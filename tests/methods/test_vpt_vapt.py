"""VPT (shallow, deep) and VAPT: parameter counts, where prompt tokens go, VAPT's exact computation."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import vprompt
from numerics import assert_exact
from vprompt import MethodNotApplicable
from vprompt.methods.vapt import VAPT, VAPTConfig
from vprompt.methods.vpt import VPTConfig, VPTDeep, VPTShallow
from vprompt.model import TunedModel

TINY = dict(img_size=32, patch_size=4, depth=3, embed_dim=24, num_heads=2)
NP = 3  # prompts per layer in the tiny tests


def vit(**extra) -> vprompt.Backbone:
    """8×8 grid of 4-px patches, CLS token, 3 blocks."""
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY, **extra)


def vit_avg() -> vprompt.Backbone:
    """Average pooling over the patch tokens and no prefix token at all."""
    return vit(class_token=False, global_pool="avg")


def dinov2_reg() -> vprompt.Backbone:
    """Patch 14, CLS + 4 registers, 3×3 grid, 2 blocks."""
    kwargs = dict(img_size=42, depth=2, embed_dim=24, num_heads=2)
    return vprompt.backbone("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=5, **kwargs)


def vit_nonsquare() -> vprompt.Backbone:
    """32×24 input: an 8×6 grid (built directly: the loader takes square sizes only)."""
    kwargs = {**TINY, "img_size": (32, 24)}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **kwargs)
    return vprompt.Backbone(model, {"input_size": (3, 32, 24)}, "vit_tiny_nonsquare")


BACKBONES = [vit, vit_avg, dinov2_reg, vit_nonsquare]
METHODS = {
    "vpt-shallow": lambda: VPTShallow(VPTConfig(num_prompts=NP)),
    "vpt-deep": lambda: VPTDeep(VPTConfig(num_prompts=NP)),
    "vapt": lambda: VAPT(VAPTConfig(num_prompts=NP)),
}


def blocks(bb):
    return list(bb.model.blocks)


def prefix_of(bb) -> int:
    return bb.site("embed").prefix_tokens


@pytest.fixture(scope="module")
def vit_b16():
    return vprompt.backbone("vit_base_patch16_224", pretrained=False, num_classes=0)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: VAPT(VAPTConfig()), 7_680 + 12_288 + 16_896 + 18_700 + 44),
        (lambda: VPTDeep(VPTConfig()), 92_160),
        (lambda: VPTShallow(VPTConfig()), 7_680),
    ],
    ids=["vapt", "vpt-deep", "vpt-shallow"],
)
def test_parameter_counts_vit_b16(vit_b16, make, expected):
    model = TunedModel(vit_b16, make())
    try:
        assert model.trainable_parameters(head=False) == expected
    finally:
        model.unload()


def test_vapt_parameter_breakdown(vit_b16):
    model = TunedModel(vit_b16, VAPT(VAPTConfig()))
    try:
        m = model.method
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        assert (m.prompt.numel(), count(m.feature_projector), count(m.norms)) == (7_680, 12_288, 16_896)
        assert (count(m.projectors), m.kernels.numel()) == (18_700, 44)
        assert len(m.norms) == len(m.projectors) == 11 and m.kernels.shape == (11, 1, 1, 2, 2)
    finally:
        model.unload()


def capture(bb):
    """Hooks registered *before* a method: raw embed / block outputs, tokens entering blocks and norm."""
    seen = {"raw": {}, "enter": {}, "norm": None}
    handles = [
        bb.model.norm_pre.register_forward_hook(lambda m, a, out: seen["raw"].__setitem__("embed", out))
    ]
    for i, block in enumerate(blocks(bb)):
        handles.append(
            block.register_forward_hook(lambda m, a, out, i=i: seen["raw"].__setitem__(f"block.{i}", out))
        )
        handles.append(
            block.register_forward_pre_hook(lambda m, args, i=i: seen["enter"].__setitem__(i, args[0]))
        )
    handles.append(bb.model.norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("norm", args[0])))
    return seen, handles


def drop(tokens, prefix, n):
    """Remove ``n`` tokens after the prefix."""
    return torch.cat([tokens[:, :prefix], tokens[:, prefix + n :]], dim=1)


@pytest.mark.parametrize("factory", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_prompts_are_inserted_replaced_and_stripped(method, factory):
    bb = factory().eval()
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        bare_features = bb.model.forward_features(x)
    seen, handles = capture(bb)
    model = TunedModel(bb, METHODS[method]())
    prefix, m = prefix_of(bb), model.method
    T = bb.site("embed").shape[0]
    with torch.no_grad():
        out = model(x)
        features = bb.model.forward_features(x)
    assert out.shape == (2, 5)
    pooled = m.geometry.pool_prompts  # an average-pooling head pools the prompts too (official 'original')
    assert pooled == (factory is vit_avg)
    # the final norm and pooling see the original tokens (and the prompts, where the head pools them)
    assert features.shape[1] == bare_features.shape[1] + (NP if pooled else 0)
    raw, enter = seen["raw"], seen["enter"]
    assert raw["embed"].shape[1] == T
    for i in range(len(blocks(bb))):
        assert enter[i].shape[1] == T + NP, i  # every block sees the prompts
    # block 0: [prefix, P0, X] with P0 exactly the parameter (eval mode: no dropout)
    p0 = m.prompts[0] if method != "vapt" else m.prompt
    torch.testing.assert_close(drop(enter[0], prefix, NP), raw["embed"], rtol=0, atol=0)
    torch.testing.assert_close(enter[0][:, prefix : prefix + NP], p0.expand(2, -1, -1), rtol=0, atol=0)
    for i in range(1, len(blocks(bb))):
        previous = raw[f"block.{i - 1}"]
        torch.testing.assert_close(drop(enter[i], prefix, NP), drop(previous, prefix, NP), rtol=0, atol=0)
        slots = enter[i][:, prefix : prefix + NP]
        if method == "vpt-shallow":  # prompts travel through the blocks like other tokens
            torch.testing.assert_close(slots, previous[:, prefix : prefix + NP], rtol=0, atol=0)
        elif method == "vpt-deep":  # replaced by the layer's own prompts
            torch.testing.assert_close(slots, m.prompts[i].expand(2, -1, -1), rtol=0, atol=0)
        else:  # adaptive prompts start at exactly zero
            assert torch.count_nonzero(slots) == 0
    # stripped at the output of the last block: the prefix and patch tokens, in their places
    last = raw[f"block.{len(blocks(bb)) - 1}"]
    torch.testing.assert_close(seen["norm"], last if pooled else drop(last, prefix, NP), rtol=0, atol=0)
    for h in handles:
        h.remove()


def test_vapt_prompts_are_zero_at_init_in_train_mode_too():
    bb = dinov2_reg()
    seen, handles = capture(bb)
    config = VAPTConfig(num_prompts=NP, prompt_dropout=0.5, conv_dropout=0.5, dropout=0.5)
    model = TunedModel(bb, VAPT(config)).train()
    model(torch.randn(2, *bb.input_size))
    prefix = prefix_of(bb)
    assert torch.count_nonzero(seen["enter"][1][:, prefix : prefix + NP]) == 0
    for h in handles:
        h.remove()


def literal_vapt_prompts(
    method: VAPT, layer: int, previous: torch.Tensor, prefix: int, feature_projector: bool = True
) -> torch.Tensor:
    """SPEC §2.1 step 2 exactly as written (eval mode), from the previous block's output ``[prefix, P, X]``.

    ``feature_projector=False`` stops before the feature projector (returns the token projector's z).
    """
    n, (h, w), dim = method.config.num_prompts, method.geometry.grid, method.geometry.dim
    norm = method.norms[layer - 1]
    tokens = F.layer_norm(drop(previous, prefix, n), (dim,), norm.weight, norm.bias)  # LN([CLS, X])
    patches = tokens[:, prefix:]  # drop CLS and registers
    maps = patches.transpose(1, 2).reshape(previous.shape[0], dim, h, w)
    k = method.config.kernel
    maps = F.conv2d(maps, method.kernels[layer - 1].view(1, 1, k, k).expand(dim, 1, k, k), groups=dim)
    assert maps.shape[-2:] == (h - k + 1, w - k + 1)
    projector = method.projectors[layer - 1]
    z = F.linear(maps.flatten(2), projector.weight, projector.bias).transpose(1, 2)  # (B, N_p, D)
    if not feature_projector:
        return z
    mlp = method.feature_projector
    return z + F.linear(F.relu(F.linear(z, mlp.fc1.weight)), mlp.fc2.weight)


def randomise(method: VAPT) -> None:
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 0.5)


@pytest.mark.parametrize(
    "factory, kernel",
    [(vit_nonsquare, 2), (vit_nonsquare, 3), (dinov2_reg, 2), (vit_avg, 2)],
    ids=["8x6-grid", "8x6-grid-kernel3", "registers", "no-cls"],
)
@pytest.mark.numerics
def test_vapt_prompt_matches_the_literal_computation(factory, kernel, float64):
    """Values and gradients of every adaptive prompt equal SPEC §2.1's literal computation."""
    bb = factory()
    seen, handles = capture(bb)
    model = TunedModel(bb, VAPT(VAPTConfig(num_prompts=NP, kernel=kernel))).eval()
    randomise(model.method)
    params = list(model.method.parameters())
    model(torch.randn(2, *bb.input_size))
    prefix = prefix_of(bb)
    for layer in range(1, len(blocks(bb))):
        expected = literal_vapt_prompts(model.method, layer, seen["raw"][f"block.{layer - 1}"], prefix)
        got = seen["enter"][layer][:, prefix : prefix + NP]
        assert torch.count_nonzero(got) > 0
        assert_exact(got, expected)
        weights = torch.randn_like(got)
        want = torch.autograd.grad((expected * weights).sum(), params, retain_graph=True, allow_unused=True)
        have = torch.autograd.grad((got * weights).sum(), params, retain_graph=True, allow_unused=True)
        for a, b in zip(have, want, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert_exact(a, b)
    for h in handles:
        h.remove()


@pytest.mark.numerics
def test_vapt_dropout2d_drops_whole_channels(float64):
    bb = vit()
    seen, handles = capture(bb)
    config = VAPTConfig(num_prompts=NP, prompt_dropout=0.0, conv_dropout=0.5, dropout=0.0)
    model = TunedModel(bb, VAPT(config))
    m = model.method
    randomise(m)
    with torch.no_grad():
        m.feature_projector.fc2.weight.zero_()  # feature projector = identity: see the dropped z
        x = torch.randn(4, *bb.input_size)
        model.eval()
        model(x)
        clean = seen["enter"][1][:, 1 : 1 + NP] - m.projectors[0].bias[:, None]
        model.train()
        model(x)
        dropped = seen["enter"][1][:, 1 : 1 + NP] - m.projectors[0].bias[:, None]
    # per (sample, channel) the N_p values are either all dropped or all scaled by 1 / (1 - p)
    zero = dropped.abs().amax(dim=1) < 1e-6
    kept = torch.isclose(dropped, 2 * clean, rtol=1e-4, atol=1e-5).all(dim=1)
    assert bool((zero | kept).all()) and zero.any() and kept.any()
    for h in handles:
        h.remove()


def test_vapt_defaults_are_the_official_training_options():
    config = VAPTConfig()
    assert (config.prompt_dropout, config.conv_dropout, config.dropout) == (0.1, 0.1, 0.1)
    model = TunedModel(vit(), VAPT(VAPTConfig(num_prompts=NP, dropout=0.3)))
    assert model.method.feature_projector.dropout.p == 0.3  # `dropout` is the projector's hidden dropout
    model.unload()


def vapt_model(bb, **dropouts) -> TunedModel:
    """VAPT with randomised parameters (non-zero adaptive prompts) and the given dropout rates (else 0)."""
    rates = {"prompt_dropout": 0.0, "conv_dropout": 0.0, "dropout": 0.0, **dropouts}
    model = TunedModel(bb, VAPT(VAPTConfig(num_prompts=NP, **rates)))
    randomise(model.method)
    return model


def test_vapt_without_dropout_trains_deterministically():
    bb = vit()
    x = torch.randn(2, *bb.input_size)
    model = vapt_model(bb)
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("option", ["prompt_dropout", "conv_dropout", "dropout"])
def test_each_vapt_dropout_acts_in_training_only(option):
    bb = vit()
    x = torch.randn(4, *bb.input_size)
    plain = vapt_model(bb)
    with torch.no_grad():
        reference = plain.eval()(x)
        state = {k: v.clone() for k, v in plain.method.state_dict().items()}
        plain.unload()
        dropped = vapt_model(bb, **{option: 0.5})  # the same parameters, one dropout switched on
        dropped.method.load_state_dict(state)
        torch.testing.assert_close(dropped.eval()(x), reference, rtol=0, atol=0)  # eval: no dropout at all
        assert not torch.equal(dropped.train()(x), reference)


def test_vapt_prompt_dropout_drops_elements_of_p0():
    bb = vit()
    seen, handles = capture(bb)
    model = vapt_model(bb, prompt_dropout=0.5).train()
    with torch.no_grad():
        model(torch.randn(4, *bb.input_size))
        slots = seen["enter"][0][:, 1 : 1 + NP]  # P0 as it enters block 0
        p0 = model.method.prompt.expand_as(slots)
    zero, kept = slots == 0, torch.isclose(slots, 2 * p0, rtol=1e-6, atol=0)
    assert bool((zero | kept).all()) and zero.any() and kept.any()
    assert not torch.equal(zero[0], zero[1])  # a mask per sample
    for h in handles:
        h.remove()


def test_vapt_prompt_dropout_one_removes_p0_in_training():
    """With ``prompt_dropout=1`` (the other dropouts 0) P0 contributes exactly zero in training."""
    bb = vit()
    x = torch.randn(2, *bb.input_size)
    model = vapt_model(bb, prompt_dropout=1.0)
    with torch.no_grad():
        trained = model.train()(x)
        kept = model.eval()(x)
        model.method.prompt.zero_()
        without_p0 = model(x)
    torch.testing.assert_close(trained, without_p0, rtol=0, atol=0)
    assert not torch.equal(kept, without_p0)


@pytest.mark.numerics
def test_vapt_dropout_one_makes_the_feature_projector_the_identity(float64):
    """``dropout`` is the projector's hidden dropout: at 1 the prompts are the token projector's z."""
    bb = vit()
    seen, handles = capture(bb)
    model = vapt_model(bb, dropout=1.0).train()
    with torch.no_grad():
        model(torch.randn(2, *bb.input_size))
    m, prefix = model.method, prefix_of(bb)
    for layer in range(1, len(blocks(bb))):
        previous = seen["raw"][f"block.{layer - 1}"]
        got = seen["enter"][layer][:, prefix : prefix + NP]
        z = literal_vapt_prompts(m, layer, previous, prefix, feature_projector=False)
        assert_exact(got, z)
        assert not torch.allclose(got, literal_vapt_prompts(m, layer, previous, prefix), rtol=1e-3, atol=1e-3)
    for h in handles:
        h.remove()


def test_vapt_kernels_are_standard_normal():
    """Each layer's K×K kernel is drawn N(0, 1) (``torch.randn``, as the official code), right after P0."""
    bb = vprompt.backbone(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=5,
        img_size=64,
        patch_size=4,
        depth=12,
        embed_dim=24,
        num_heads=2,
    )  # 16×16 grid: 11 layers of 16×16 kernels = 2,816 draws
    torch.manual_seed(123)
    model = TunedModel(bb, VAPT(VAPTConfig(num_prompts=NP, kernel=16)))
    kernels = model.method.kernels.detach()
    assert kernels.shape == (11, 1, 1, 16, 16)
    assert abs(float(kernels.mean())) < 0.1 and 0.95 < float(kernels.std()) < 1.05
    assert float(kernels.abs().max()) > 3  # far outside the U(±1/K) of a default Conv2d init
    torch.manual_seed(123)
    torch.empty(NP, 24).uniform_()  # P0's VPT init comes first
    torch.testing.assert_close(kernels, torch.randn(11, 1, 1, 16, 16), rtol=0, atol=0)
    model.unload()


@pytest.mark.parametrize("option", ["prompt_dropout", "conv_dropout", "dropout"])
def test_vapt_dropout_out_of_range_is_refused(option):
    with pytest.raises(MethodNotApplicable, match=f"vapt {option} must be in \\[0, 1\\], got 1.5"):
        TunedModel(vit(), VAPT(VAPTConfig(**{option: 1.5})))


@pytest.mark.parametrize("method", METHODS)
def test_every_parameter_trains(method):
    bb = vit()
    model = TunedModel(bb, METHODS[method]()).train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(params) >= {f"method.{n}" for n, _ in model.method.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(params.values(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(4, *bb.input_size, generator=g), torch.randint(0, 5, (4,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    unchanged = [n for n, p in params.items() if torch.equal(p, before[n])]
    assert not unchanged
    assert not any(p.grad is not None for p in bb.parameters() if not p.requires_grad)


def test_prompt_dropout_defaults_and_modes():
    bb = vit()
    x = torch.randn(2, *bb.input_size)
    for make, p in [(lambda: VPTShallow(), 0.0), (lambda: VPTDeep(), 0.1)]:
        model = TunedModel(bb, make())
        assert model.method.prompt_dropout.p == p
        with torch.no_grad():
            eval_a, eval_b = model.eval()(x), model(x)
            train_a, train_b = model.train()(x), model(x)
        torch.testing.assert_close(eval_a, eval_b, rtol=0, atol=0)
        if p:
            assert not torch.equal(train_a, train_b) and not torch.equal(train_a, eval_a)
        else:
            torch.testing.assert_close(train_a, eval_a, rtol=0, atol=0)
        model.unload()
    model = TunedModel(bb, VPTDeep(VPTConfig(dropout=0.0)))
    assert model.method.prompt_dropout.p == 0.0
    model.unload()


@pytest.mark.parametrize("method", METHODS)
def test_cnn_backbone_is_refused(method):
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=5, img_size=32)
    with pytest.raises(MethodNotApplicable, match=f"{method} .* family 'resnet'"):
        TunedModel(bb, METHODS[method]())
    assert all(p.requires_grad for p in bb.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bb.modules())


def test_vapt_kernel_larger_than_the_grid_is_refused():
    with pytest.raises(
        MethodNotApplicable,
        match="vapt kernel=4 is out of range: it must be from 1 to 3 \\(the 3×3 patch grid",
    ):
        TunedModel(dinov2_reg(), VAPT(VAPTConfig(kernel=4)))


@pytest.mark.parametrize("method", METHODS)
def test_detach_restores_the_backbone_bit_for_bit(method):
    bb = dinov2_reg().eval()
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        reference = bb(x)
        model = TunedModel(bb, METHODS[method]())
        assert not torch.equal(model(x), reference)
        backbone = model.unload()
        torch.testing.assert_close(backbone(x), reference, rtol=0, atol=0)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bb.modules())


def test_prompt_init_bound():
    bb = dinov2_reg()  # patch 14, D 24
    model = TunedModel(bb, VPTDeep(VPTConfig(num_prompts=50)))
    bound = (6 / (3 * 14 * 14 + 24)) ** 0.5
    prompts = model.method.prompts
    assert prompts.shape == (2, 50, 24)
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.8 * bound
