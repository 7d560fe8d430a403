"""The last block of a CLS-pooled ViT computes the CLS row alone: exact, automatic, and only where valid."""

from __future__ import annotations

import pytest
import timm
import torch

import vprompt
from numerics import assert_exact, assert_float32_as_close_as_reference
from vprompt.backbones.cls_only import ClsOnlyBlocks, tokenwise, why_not
from vprompt.methods import METHODS

pytestmark = pytest.mark.numerics

VIT = dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2)


def vit(num_classes=4, **kwargs):
    return vprompt.backbone(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **{**VIT, **kwargs}
    )


def rows_seen_by_the_final_norm(bb: vprompt.Backbone) -> list[int]:
    """Install a (token-wise, so allowed) probe on the final norm: the number of rows it gets."""
    seen: list[int] = []
    bb.model.norm.register_forward_hook(tokenwise(lambda _m, args, _out: seen.append(args[0].shape[1])))
    return seen


# every method, on a ViT: (method, options, keeps the source head)
CASES = [
    ("linear", {}, False),
    ("full", {}, False),
    ("ap", {"site": "block.1"}, False),
    ("ap", {"site": "embed", "shape": "channel"}, False),
    ("aap", {"site": "block.1"}, False),
    ("vp-pad", {"width": 4}, False),
    ("vp-pad", {"mapping": "rlm", "num_classes": 4, "width": 4}, True),
    ("vp-expansive", {"inner_size": 16}, False),
    ("vpt-shallow", {"num_prompts": 3}, False),
    ("vpt-deep", {"num_prompts": 3}, False),
    ("vapt", {"num_prompts": 3}, False),
    ("gatevpt", {"num_prompts": 3}, False),
    ("e2vpt", {"num_prompts": 3, "kv_prompts": 2}, False),
    ("norm", {}, False),
    ("bitfit", {}, False),
    ("lora", {"r": 2}, False),
    ("adapter", {"r": 2}, False),
    ("ssf", {}, False),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for m, o, _ in CASES]


def test_every_method_is_covered():
    assert {m for m, *_ in CASES} == set(METHODS)


def perturbed(model) -> None:
    """Move every trainable tensor off its (often zero) initial value, so that each one matters."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def logits_and_grads(model, x, mode: str):
    model.train(mode == "train")
    torch.manual_seed(7)  # the methods' own dropouts draw the same masks on both sides
    out = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.square().sum(), params)
    return out.detach(), grads


@pytest.mark.parametrize("registers", [0, 2], ids=["cls", "cls+registers"])
@pytest.mark.parametrize("method,options,source_head", CASES, ids=IDS)
def test_the_cls_row_alone_gives_the_same_logits_and_gradients(
    method, options, source_head, registers, float64
):
    bb = vit(num_classes=None if source_head else 4, reg_tokens=registers)
    model = vprompt.attach(bb, method, **options)
    perturbed(model)
    model.method.on_epoch_start(model, [(torch.randn(4, *bb.input_size), torch.arange(4))], 0)
    assert bb.cls_only_status() == "CLS row only"
    rows = rows_seen_by_the_final_norm(bb)
    x = torch.randn(3, *model.input_size)
    tokens = bb.site("block.2").shape[0]
    for mode in ("train", "eval"):
        bb.cls_only_last_block = True
        short, short_grads = logits_and_grads(model, x, mode)
        assert rows[-1] == 1, "the last block computed every row"
        bb.cls_only_last_block = False
        full, full_grads = logits_and_grads(model, x, mode)
        assert rows[-1] == tokens
        assert_exact(short, full, f"{mode} logits")
        for i, (a, b) in enumerate(zip(short_grads, full_grads, strict=True)):
            assert_exact(a, b, f"{mode} gradient {i}")


def test_the_cached_path_shortens_the_last_block_too(float64):
    bb = vit()
    model = vprompt.attach(bb, "vpt-deep", num_prompts=3)
    perturbed(model)
    model.eval()
    rows = rows_seen_by_the_final_norm(bb)
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        raw = bb.site("embed").capture(bb.model, x)
        resumed = model.forward_from("embed", raw)
        assert rows[-1] == 1
        bb.cls_only_last_block = False
        full = model(x)
    assert_exact(resumed, full)


def test_unfused_attention_is_shortened_exactly(float64):
    bb = vit()
    for block in bb.model.blocks:
        block.attn.fused_attn = False
    model = vprompt.attach(bb, "lora", r=2).eval()
    perturbed(model)
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        short = model(x)
        bb.cls_only_last_block = False
        full = model(x)
    assert_exact(short, full)


def step_aside(bb: vprompt.Backbone, x: torch.Tensor, model=None) -> str:
    """Assert the forward computes every token (bit-for-bit the switched-off result) and return why."""
    model = model or bb
    status = bb.cls_only_status()
    rows = rows_seen_by_the_final_norm(bb)
    with torch.no_grad():
        on = model(x)
        bb.cls_only_last_block = False
        off = model(x)
        bb.cls_only_last_block = True
    assert rows == [rows[0], rows[0]] and rows[0] > 1
    assert torch.equal(on, off)
    assert status.startswith("all tokens: ")
    return status


def test_average_pooling_uses_every_token():
    bb = vit(global_pool="avg")
    assert "pools 'avg'" in step_aside(bb.eval(), torch.randn(2, *bb.input_size))


def test_an_activation_prompt_on_the_last_block_gets_every_token():
    bb = vit()
    model = vprompt.attach(bb, "ap", site="block.2").eval()
    perturbed(model)
    assert "ActivationPrompt.add" in step_aside(bb, torch.randn(2, *bb.input_size), model)


def test_a_users_hook_on_the_last_block_gets_every_token():
    bb = vit().eval()
    seen = []
    bb.model.blocks[-1].register_forward_hook(lambda _m, _a, out: seen.append(out.shape[1]))
    assert "torch hook on the last block" in step_aside(bb, torch.randn(2, *bb.input_size))
    assert seen == [17, 17]


def test_an_unmarked_hook_inside_the_last_block_or_on_the_final_norm_gets_every_token():
    bb = vit().eval()
    handle = bb.model.blocks[-1].mlp.register_forward_hook(lambda *_: None)
    assert "Mlp in the last block" in step_aside(bb, torch.randn(2, *bb.input_size))
    handle.remove()
    bb.model.norm.register_forward_pre_hook(lambda *_: None)
    assert "final norm" in step_aside(bb, torch.randn(2, *bb.input_size))


def test_a_capture_at_the_last_block_gets_every_token():
    bb = vit().eval()
    x = torch.randn(2, *bb.input_size)
    assert bb.site("block.2").capture(bb, x).shape == (2, 17, 24)
    assert bb.site("block.2").shape == (17, 24)  # the sites' shape probe saw every token


def test_distillation_heads_read_two_rows_and_are_left_alone():
    bb = vprompt.backbone("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=4, **VIT)
    assert "forward_head" in step_aside(bb.eval(), torch.randn(2, *bb.input_size))


def test_an_active_dropout_after_qkv_leaves_the_block_whole():
    bb = vit(proj_drop_rate=0.1)
    bb.train()
    assert "dropout" in bb.cls_only_status()
    bb.eval()
    assert bb.cls_only_status() == "CLS row only"


def test_timm_verbs_still_see_every_token():
    bb = vit()
    model = vprompt.attach(bb, "vpt-deep", num_prompts=3).eval()
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        assert bb.model.forward_features(x).shape == (2, 17, 24)
        assert model.forward_features(x).shape == (2, 17, 24)
        features = bb.model.forward_intermediates(x, intermediates_only=True, output_fmt="NLC")
        assert features[-1].shape == (2, 16, 24)  # every patch row (timm drops the prefix here)


def test_the_model_keeps_timm_structure_and_state_dict_keys(float64):
    bb = vit()
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, **VIT)
    assert isinstance(bb.model.blocks, ClsOnlyBlocks)
    assert list(bb.model.state_dict()) == list(plain.state_dict())
    bb.model.load_state_dict(plain.state_dict())
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        assert_exact(bb.eval()(x), plain.eval()(x))
    assert isinstance(bb.model.blocks[:2], ClsOnlyBlocks) and not bb.model.blocks[:2].reads_cls
    assert why_not(bb.model) is None


def test_non_vit_backbones_are_untouched():
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=4, img_size=32)
    assert bb.cls_only_status().startswith("all tokens: not a timm VisionTransformer")


@pytest.mark.offline_weights
@pytest.mark.parametrize("method,options", [("vpt-deep", {}), ("vapt", {}), ("lora", {})])
def test_real_dinov2_weights_give_the_same_logits(method, options):
    """Exact in float64; in float32 as close to the float64 result as the full path's own float32 run."""
    bb = vprompt.backbone("offline:dinov2_vits14_imgfocus", num_classes=4, img_size=56)
    model = vprompt.attach(bb, method, **options)
    perturbed(model)
    assert bb.cls_only_status() == "CLS row only"
    x = torch.randn(2, *bb.input_size)
    results = {}
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        for short in (True, False):
            bb.cls_only_last_block = short
            results[dtype, short] = logits_and_grads(model, x.to(dtype), "eval")
    (short64, grads64), (full64, full_grads64) = results[torch.float64, True], results[torch.float64, False]
    assert_exact(short64, full64, "float64 logits")
    for i, (a, b) in enumerate(zip(grads64, full_grads64, strict=True)):
        assert_exact(a, b, f"float64 gradient {i}")
    (short32, grads32), (full32, full_grads32) = results[torch.float32, True], results[torch.float32, False]
    assert_float32_as_close_as_reference(short32, full32, full64, "float32 logits")
    for i, (a, b, ref) in enumerate(zip(grads32, full_grads32, full_grads64, strict=True)):
        assert_float32_as_close_as_reference(a, b, ref, f"float32 gradient {i}")


def test_a_capture_before_the_head_is_shortened_like_the_forward(float64):
    """The linear probe's cache holds pre-logits computed as the forward computes them."""
    bb = vit().eval()
    rows = rows_seen_by_the_final_norm(bb)
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        features = bb.site("pre_logits").capture(bb, x)
        assert rows == [1]
        torch.testing.assert_close(bb.head(features), bb(x), rtol=0, atol=0)
        bb.cls_only_last_block = False
        assert_exact(bb.site("pre_logits").capture(bb, x), features)
