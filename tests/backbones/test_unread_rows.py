"""A ViT block whose prompt output rows are replaced before anyone reads them leaves them uncomputed:
exact, declared by the method's hook, and only where valid."""

from __future__ import annotations

import pytest
import torch

import vprompt
from numerics import assert_exact
from vprompt.backbones.cls_only import ignores_rows, tokenwise
from vprompt.methods import METHODS, MethodNotApplicable
from vprompt.methods.lora import split_projection

pytestmark = pytest.mark.numerics

VIT = dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2)
PROMPTS = 3
TOKENS = 1 + 16  # CLS + a 4×4 patch grid, before the prompts


def vit(**kwargs) -> vprompt.Backbone:
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=4, **{**VIT, **kwargs})


def perturbed(model) -> None:
    """Move every trainable tensor off its (often zero) initial value, so that each one matters."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def rows_seen_by_the_mlps(bb: vprompt.Backbone) -> list[list[int]]:
    """A token-wise (so allowed) probe on every block's MLP: the rows each block computed, per forward."""
    seen: list[list[int]] = [[] for _ in bb.model.blocks]
    for i, block in enumerate(bb.model.blocks):
        block.mlp.register_forward_hook(
            tokenwise(lambda _m, args, _out, i=i: seen[i].append(args[0].shape[1]))
        )
    return seen


def logits_and_grads(model, x, mode: str, skip: bool):
    model.backbone.skip_unread_rows = skip
    model.train(mode == "train")
    torch.manual_seed(7)  # the methods' own dropouts draw the same masks on both sides
    out = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.square().sum(), params)
    return out.detach(), grads


def assert_same(a, b, what: str) -> None:
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert_exact(out_a, out_b, f"{what} logits")
    for i, (ga, gb) in enumerate(zip(grads_a, grads_b, strict=True)):
        assert_exact(ga, gb, f"{what} gradient {i}")


# the methods whose hooks replace the prompt rows of every block's output (blocks 0..L-2)
REPLACING = {
    "vpt-deep": {"num_prompts": PROMPTS},
    "vapt": {"num_prompts": PROMPTS},
    # its key-value prompts (and their dropout, drawn inside every block) enter the rows computed too
    "e2vpt": {"num_prompts": PROMPTS, "kv_prompts": 2, "kv_dropout": 0.2},
}
# options for the other methods' attach on the tiny ViT (defaults otherwise)
OTHERS = {
    "ap": {"site": "block.1"},
    "aap": {"site": "block.1"},
    "vp-pad": {"width": 4},
    "vp-expansive": {"inner_size": 16},
    "vpt-shallow": {"num_prompts": PROMPTS},
    "gatevpt": {"num_prompts": PROMPTS},
    "lora": {"r": 2},
    "adapter": {"r": 2},
}


def test_exactly_the_methods_that_replace_prompt_rows_skip_them_in_the_inner_blocks():
    """Every registered method attached to a ViT: the blocks before the last leave rows uncomputed for
    VPT-deep, VAPT and E²VPT alone (a new method that replaces prompt rows adds itself to REPLACING and marks its
    hook with ``ignores_rows``)."""
    skipping = set()
    for name in METHODS:
        bb = vit()
        try:
            vprompt.attach(bb, name, **{**OTHERS, **REPLACING}.get(name, {}))
        except MethodNotApplicable:
            continue
        status = bb.rows_status()
        if status.startswith("rows") and not status.endswith(f" 1 of {VIT['depth']} blocks"):
            skipping.add(name)
    assert skipping == set(REPLACING)


@pytest.mark.parametrize("registers", [0, 2], ids=["cls", "cls+registers"])
@pytest.mark.parametrize("method", list(REPLACING))
def test_skipped_prompt_rows_give_the_same_logits_and_gradients(method, registers, float64):
    bb = vit(reg_tokens=registers)
    model = vprompt.attach(bb, method, **REPLACING[method])
    perturbed(model)
    prefix = 1 + registers
    assert bb.rows_status() == f"rows {prefix}:{prefix + PROMPTS} uncomputed in 3 of 3 blocks"
    seen = rows_seen_by_the_mlps(bb)
    x = torch.randn(3, *model.input_size)
    tokens = TOKENS + registers + PROMPTS
    for mode in ("train", "eval"):
        skipped = logits_and_grads(model, x, mode, skip=True)
        assert [s[-1] for s in seen] == [tokens - PROMPTS, tokens - PROMPTS, 1]  # the last: CLS alone
        full = logits_and_grads(model, x, mode, skip=False)
        assert [s[-1] for s in seen] == [tokens, tokens, 1]
        assert_same(skipped, full, mode)


@pytest.mark.parametrize("pool_prompts", [False, None])
@pytest.mark.parametrize("method", ["vpt-deep", "vapt", "e2vpt", "vpt-shallow", "gatevpt"])
def test_average_pooling_skips_the_stripped_rows_of_the_last_block_too(method, pool_prompts, float64):
    """An average pooling of the patch tokens alone (``pool_prompts=False``, the official 'img_pool')
    reads every row but the prompts': the last block computes all but those, also for the shallow
    methods, whose strip is their only such hook. Pooling the prompts too (the default on an
    average-pooled backbone, the official 'original') reads them: the last block computes every row."""
    bb = vit(global_pool="avg")
    options = {"num_prompts": PROMPTS, **REPLACING.get(method, {})}
    model = vprompt.attach(bb, method, **options, pool_prompts=pool_prompts)
    perturbed(model)
    seen = rows_seen_by_the_mlps(bb)
    x = torch.randn(2, *model.input_size)
    tokens = TOKENS + PROMPTS
    deep = method in REPLACING
    last = tokens - PROMPTS if pool_prompts is False else tokens
    for mode in ("train", "eval"):
        skipped = logits_and_grads(model, x, mode, skip=True)
        want = [tokens - PROMPTS if deep else tokens] * 2 + [last]
        assert [s[-1] for s in seen] == want
        full = logits_and_grads(model, x, mode, skip=False)
        assert [s[-1] for s in seen] == [tokens] * 3
        assert_same(skipped, full, mode)


def test_no_prefix_token_and_unfused_attention(float64):
    """Prompts at row 0 (no class token, average pooling) and timm's explicit attention: still exact."""
    bb = vit(class_token=False, global_pool="avg")
    for block in bb.model.blocks:
        block.attn.fused_attn = False
    model = vprompt.attach(bb, "vpt-deep", num_prompts=PROMPTS, pool_prompts=False)
    perturbed(model)
    assert bb.rows_status() == f"rows 0:{PROMPTS} uncomputed in 3 of 3 blocks"
    x = torch.randn(2, *model.input_size)
    assert_same(logits_and_grads(model, x, "eval", True), logits_and_grads(model, x, "eval", False), "eval")


def test_the_cached_path_skips_the_rows_too(float64):
    bb = vit()
    model = vprompt.attach(bb, "vapt", num_prompts=PROMPTS).eval()
    perturbed(model)
    seen = rows_seen_by_the_mlps(bb)
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        raw = bb.site("embed").capture(bb.model, x)
        resumed = model.forward_from("embed", raw)
        assert [s[-1] for s in seen] == [TOKENS, TOKENS, 1]
        bb.skip_unread_rows = False
        full = model(x)
        assert [s[-1] for s in seen] == [TOKENS + PROMPTS, TOKENS + PROMPTS, 1]
    assert_exact(resumed, full)


def test_stochastic_depth_in_training_stays_exact(float64):
    """DropPath draws one value per sample whatever the rows, so the skipped block draws what the full one
    does: it stays on in training, and exact."""
    bb = vit(drop_path_rate=0.5)
    model = vprompt.attach(bb, "vpt-deep", num_prompts=PROMPTS)
    perturbed(model)
    seen = rows_seen_by_the_mlps(bb)
    x = torch.randn(4, *model.input_size)
    model.train()
    model.backbone.train()  # TunedModel keeps the backbone in eval mode: make its DropPath draw
    torch.manual_seed(7)
    out = model(x)
    assert seen[0][-1] == TOKENS
    grads = torch.autograd.grad(out.square().sum(), [model.method.prompts])
    bb.skip_unread_rows = False
    torch.manual_seed(7)
    full = model(x)
    full_grads = torch.autograd.grad(full.square().sum(), [model.method.prompts])
    assert seen[0][-1] == TOKENS + PROMPTS
    assert not torch.equal(full, model.eval()(x))  # the drop paths did act
    assert_exact(out.detach(), full.detach(), "logits")
    assert_exact(grads[0], full_grads[0], "gradient")


# ----------------------------------------------------------------------------- where it steps aside


def step_aside(model, x: torch.Tensor, blocks: list[int]) -> None:
    """``blocks`` compute every row (the others skip), and the logits are bit-for-bit the full path's."""
    bb = model.backbone
    seen = rows_seen_by_the_mlps(bb)
    with torch.no_grad():
        bb.skip_unread_rows = True
        torch.manual_seed(0)  # an active dropout draws the same masks on both sides
        on = model(x)
        rows = [s[-1] for s in seen]
        bb.skip_unread_rows = False
        torch.manual_seed(0)
        off = model(x)
        bb.skip_unread_rows = True
    tokens = TOKENS + PROMPTS
    want = [tokens if i in blocks else tokens - PROMPTS for i in range(len(seen) - 1)] + [1]
    assert rows == want
    torch.testing.assert_close(on, off, rtol=1e-12, atol=1e-12)


def test_a_torch_hook_on_a_block_gets_every_row(float64):
    bb = vit()
    model = vprompt.attach(bb, "vpt-deep", num_prompts=PROMPTS).eval()
    perturbed(model)
    outputs = []
    bb.model.blocks[0].register_forward_hook(lambda _m, _a, out: outputs.append(out))
    step_aside(model, torch.randn(2, *bb.input_size), blocks=[0])
    assert outputs[0].shape[1] == TOKENS + PROMPTS


def test_a_function_hooked_before_the_replacing_one_gets_every_row(float64):
    """A capture at block.0 (the frozen-prefix cache, ``vprompt sites``) puts its function first: block 0
    computes every row, and the raw activation it returns is the full block's, prompt rows included."""
    bb = vit()
    model = vprompt.attach(bb, "vpt-deep", num_prompts=PROMPTS).eval()
    perturbed(model)
    x = torch.randn(2, *bb.input_size)
    seen = rows_seen_by_the_mlps(bb)
    with torch.no_grad():
        raw = bb.site("block.0").capture(bb, x)
        assert seen[0] == [TOKENS + PROMPTS]
        bb.skip_unread_rows = False
        assert_exact(raw, bb.site("block.0").capture(bb, x))
    assert raw.shape[1] == TOKENS + PROMPTS


def test_a_function_hooked_after_the_replacing_one_sees_the_replaced_rows(float64):
    """Functions after the marked one see its output, in which every row is computed: the skip stays."""
    bb = vit()
    model = vprompt.attach(bb, "vpt-deep", num_prompts=PROMPTS).eval()
    perturbed(model)
    seen_after = []
    bb.site("block.0").hook(lambda act: seen_after.append(act.clone()))
    x = torch.randn(2, *bb.input_size)
    step_aside(model, x, blocks=[])
    assert_exact(seen_after[0], seen_after[1])  # skipped, then full: the same replaced activation


def test_an_unmarked_hook_inside_a_block_and_an_active_dropout_get_every_row(float64):
    bb = vit()
    model = vprompt.attach(bb, "vpt-deep", num_prompts=PROMPTS).eval()
    perturbed(model)
    x = torch.randn(2, *bb.input_size)
    handle = bb.model.blocks[1].attn.proj.register_forward_hook(lambda *_: None)
    step_aside(model, x, blocks=[1])
    handle.remove()
    bb.model.blocks[0].attn.proj_drop.p = 0.1  # active in training only
    bb.model.blocks[0].attn.proj_drop.train()
    step_aside(model, x, blocks=[0])
    bb.model.blocks[0].attn.proj_drop.eval()
    step_aside(model, x, blocks=[])


def test_gradient_checkpointing_and_global_hooks_get_every_row(float64):
    bb = vit()
    model = vprompt.attach(bb, "vpt-deep", num_prompts=PROMPTS).eval()
    x = torch.randn(2, *bb.input_size)
    bb.model.set_grad_checkpointing(True)
    assert bb.rows_status() == "every row: gradient checkpointing runs the blocks itself"
    seen = rows_seen_by_the_mlps(bb)
    with torch.no_grad():
        model(x)
    assert [s[-1] for s in seen[:-1]] == [TOKENS + PROMPTS] * 2
    bb.model.set_grad_checkpointing(False)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    try:
        assert bb.rows_status() == "every row: a global module hook is registered"
    finally:
        handle.remove()
    assert bb.rows_status().startswith("rows ")
    bb.skip_unread_rows = False
    assert bb.rows_status() == "every row: skip_unread_rows is off"


def test_the_backbone_alone_and_other_methods_compute_every_row():
    bb = vit()
    assert bb.rows_status().startswith("every row: nothing is hooked first")
    vprompt.attach(bb, "ap", site="block.0")
    assert "ActivationPrompt" in bb.rows_status()


def test_ignores_rows_refuses_an_empty_or_negative_range():
    with pytest.raises(ValueError, match="0 <= start < stop"):
        ignores_rows(lambda x: x, 3, 3)
    with pytest.raises(ValueError, match="0 <= start < stop"):
        ignores_rows(lambda x: x, -1, 2)


# ------------------------------------------------------------------- LoRA: the queries that are read


def lora_calls(model) -> list[tuple[int, int] | None]:
    """Record, for every call of a LoRA layer's split, the rows of its queries and keys (None: refused)."""
    calls: list = []
    for layer in model.method._layers:

        def recording(layer, h_rows, h, width):
            parts = split_projection(layer, h_rows, h, width)
            calls.append(None if parts is None else (parts[0].shape[1], parts[1].shape[1]))
            return parts

        layer.vprompt_split_projection = recording
    return calls


@pytest.mark.parametrize("registers", [0, 2], ids=["cls", "cls+registers"])
def test_loras_last_block_computes_the_cls_query_alone(registers, float64):
    bb = vit(reg_tokens=registers)
    model = vprompt.attach(bb, "lora", r=2)
    perturbed(model)
    calls = lora_calls(model)
    x = torch.randn(3, *model.input_size)
    for mode in ("train", "eval"):
        model.backbone.cls_only_last_block = True
        short = logits_and_grads(model, x, mode, skip=True)
        assert calls[-1] == (1, TOKENS + registers)
        model.backbone.cls_only_last_block = False
        n = len(calls)
        full = logits_and_grads(model, x, mode, skip=True)
        assert len(calls) == n  # the full path runs the layer whole
        assert_same(short, full, mode)


def test_an_active_lora_dropout_runs_the_layer_whole(float64):
    """LoRA's dropout acts on the layer's input: computing the query rows apart would draw other masks,
    so the layer runs whole in training (and is split again in evaluation)."""
    bb = vit()
    model = vprompt.attach(bb, "lora", r=2, dropout=0.5)
    perturbed(model)
    calls = lora_calls(model)
    x = torch.randn(3, *model.input_size)
    model.backbone.cls_only_last_block = True
    short = logits_and_grads(model, x, "train", skip=True)
    assert calls == [None]
    model.backbone.cls_only_last_block = False
    assert_same(short, logits_and_grads(model, x, "train", skip=True), "train")
    model.backbone.cls_only_last_block = True
    logits_and_grads(model, x, "eval", skip=True)
    assert calls[-1] == (1, TOKENS)
