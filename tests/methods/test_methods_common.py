"""What every method promises: it trains exactly its own parameters (and the head), leaves every frozen
tensor bit-for-bit unchanged, round-trips through save/load, and detaches cleanly."""

from __future__ import annotations

import pytest
import torch

import vprompt
from vprompt.methods import METHODS

VIT = dict(img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2)
SWIN = dict(img_size=56, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1))


def tiny(name: str, kwargs: dict, num_classes: int | None = 4) -> vprompt.Backbone:
    kwargs = dict(kwargs)
    return vprompt.backbone(name, pretrained=False, num_classes=num_classes, **kwargs)


def vit(num_classes=4):
    return tiny("vit_tiny_patch16_224", VIT, num_classes)


def resnet(num_classes=4):
    return tiny("resnet18", dict(img_size=32), num_classes)


def swin(num_classes=4):
    return tiny("swin_tiny_patch4_window7_224", SWIN, num_classes)


def convnext(num_classes=4):
    return tiny("convnext_atto", dict(img_size=32, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), num_classes)


def resnet_bn_init(num_classes=4):
    """ResNet-18 without timm's zero-init last BatchNorm of each block (which blocks every gradient
    into the block's earlier layers while it is zero, as a random-init model has it)."""
    return tiny("resnet18", dict(img_size=32, zero_init_last=False), num_classes)


def mobilenet(num_classes=4):
    return tiny("mobilenetv3_small_050", dict(img_size=32), num_classes)


# (method, options, backbone factory, source head kept?)
CASES = [
    ("linear", {}, resnet, False),
    ("full", {}, vit, False),
    ("ap", {"site": "block.1"}, vit, False),
    ("ap", {"site": "stage.2", "shape": "channel"}, resnet, False),
    ("ap", {"site": "block.1", "shape": "spatial"}, swin, False),
    ("ap", {"site": "embed", "shape": "channel"}, vit, False),
    ("aap", {"site": "block.1"}, vit, False),
    ("aap", {"site": "stage.2", "shape": "channel", "hidden": 4}, resnet, False),
    ("aap", {"site": "block.1", "shape": "spatial", "kernel": 5}, swin, False),
    ("vp-pad", {"width": 4}, vit, False),
    ("vp-pad", {"mapping": "rlm", "num_classes": 4, "width": 4}, vit, True),
    ("vp-expansive", {"inner_size": 16, "mapping": "ilm", "num_classes": 4}, resnet, True),
    ("vp-expansive", {"inner_size": 24}, swin, False),
    ("vpt-shallow", {"num_prompts": 3}, vit, False),
    ("vpt-deep", {"num_prompts": 3}, vit, False),
    ("vapt", {"num_prompts": 3}, vit, False),
    ("gatevpt", {"num_prompts": 3}, vit, False),
    ("e2vpt", {"num_prompts": 3, "kv_prompts": 2}, vit, False),
    ("e2vpt", {"num_prompts": 3, "segments": 4, "learn_masks": True}, vit, False),
    ("e2vpt", {"num_prompts": 3, "segments": 4, "prune_tokens": [1], "prune_segments": [2, 9]}, vit, False),
    ("norm", {}, resnet, False),
    ("norm", {}, vit, False),
    ("bitfit", {}, vit, False),
    ("lora", {"r": 2}, vit, False),
    ("lora", {"r": 2}, resnet, False),
    ("adapter", {"r": 2}, swin, False),
    ("ssf", {}, vit, False),
    ("ssf", {}, swin, False),
    ("ssf", {}, convnext, False),
    ("ssf", {}, resnet_bn_init, False),
    ("ssf", {}, mobilenet, False),
]
IDS = [f"{m}-{f.__name__}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for m, o, f, _ in CASES]


def build(method, options, factory, source_head):
    bb = factory(num_classes=None) if source_head else factory()
    return bb, vprompt.attach(bb, method, **options)


def batches(bb, n=3, batch=4, classes=4):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, *bb.input_size, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def train_steps(model, data):
    model.method.on_epoch_start(model, data, 0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    got_grad = {id(p): False for p in params}
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for p in params:
            got_grad[id(p)] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        opt.step()
    model.eval()
    return got_grad


def test_every_method_is_covered():
    assert {m for m, *_ in CASES} == set(METHODS)


@pytest.mark.parametrize("method,options,factory,source_head", CASES, ids=IDS)
def test_trains_exactly_its_parameters(method, options, factory, source_head):
    bb, model = build(method, options, factory, source_head)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and model.trainable_parameters() == sum(
        p.numel() for n, p in model.named_parameters() if n in trainable
    )
    head = {f"backbone.model.{bb.head_name}.{n}" for n, _ in bb.head.named_parameters()}
    assert (head <= trainable) == (not source_head) and not (source_head and head & trainable)
    assert model.trainable_parameters(head=False) == model.trainable_parameters() - (
        0 if source_head else sum(p.numel() for p in bb.head.parameters())
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got_grad = train_steps(model, batches(bb))

    after = model.state_dict()
    assert before.keys() == after.keys()
    persistent = model.method.state_dict()
    fitted = {f"method.{n}" for n, _ in model.method.named_buffers() if n in persistent}  # label mappings
    assert fitted <= set(model.trainable_state_dict())
    for key, value in before.items():
        if key in trainable or key in fitted:
            continue
        assert torch.equal(value, after[key]), f"frozen tensor {key} changed"
    own = [n for n, p in model.named_parameters() if n in trainable and n.startswith("method.")]
    for name, p in model.named_parameters():
        if name in own:  # gradients reach every prompt / adapter parameter
            assert got_grad[id(p)], f"{name} never got a gradient"
    changed = [k for k in trainable if not torch.equal(before[k], after[k])]
    assert changed, "training changed nothing"
    if not source_head:
        assert any(k in head for k in changed), "the head did not train"


@pytest.mark.parametrize("method,options,factory,source_head", CASES, ids=IDS)
def test_save_load_gives_identical_logits(method, options, factory, source_head, tmp_path):
    bb = factory(num_classes=None) if source_head else factory()
    pretrained = {k: v.clone() for k, v in bb.model.state_dict().items()}
    model = vprompt.attach(bb, method, **options)
    data = batches(bb, n=2)
    train_steps(model, data)
    model.save_pretrained(tmp_path)
    # only the trainable state is written (plus a little safetensors header)
    size = (tmp_path / "vprompt_model.safetensors").stat().st_size
    state_bytes = sum(v.numel() * v.element_size() for v in model.trainable_state_dict().values())
    assert state_bytes <= size < state_bytes + 8 * 2**10

    # the same pretrained weights in a new backbone object, as when it is rebuilt from its checkpoint
    copy = factory(num_classes=None) if source_head else factory()
    copy.model.load_state_dict(pretrained)
    loaded = vprompt.load_adapter(tmp_path, copy)
    x = data[0][0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        if method != "linear":  # the saved state matters: without it the copy predicts differently
            assert not torch.equal(vprompt.attach(factory(), "linear")(x), model(x))


@pytest.mark.parametrize("method,options,factory,source_head", CASES, ids=IDS)
def test_detach_restores_the_backbone(method, options, factory, source_head):
    torch.manual_seed(0)
    bb = factory(num_classes=None) if source_head else factory()
    keys = list(bb.state_dict())
    flags = {n: p.requires_grad for n, p in bb.named_parameters()}
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        reference = bb.eval()(x)
    model = vprompt.attach(bb, method, **options)
    model.method.on_epoch_start(model, batches(bb, n=1), 0)
    with torch.no_grad():
        model(x)
    back = model.unload()
    assert back is bb and list(bb.state_dict()) == keys
    assert {n: p.requires_grad for n, p in bb.named_parameters()} == flags
    with torch.no_grad():
        torch.testing.assert_close(bb.eval()(x), reference, rtol=0, atol=0)


# every method on real pretrained weights: the DINOv2 ViT-S/14 and EfficientNet-Lite0 shipped offline
REAL_CASES = [
    ("dinov2", "ap", {"site": "block.8", "shape": "channel"}),
    ("dinov2", "vpt-deep", {}),
    ("dinov2", "vapt", {}),
    ("dinov2", "gatevpt", {"num_prompts": 10}),
    ("dinov2", "e2vpt", {}),
    ("dinov2", "lora", {}),
    ("dinov2", "adapter", {}),
    ("dinov2", "vp-pad", {}),
    ("dinov2", "aap", {"site": "block.8", "shape": "channel"}),
    ("efficientnet", "ap", {"site": "stage.4"}),
    ("efficientnet", "aap", {"site": "stage.4"}),
    ("efficientnet", "norm", {}),
    ("efficientnet", "bitfit", {}),
    ("efficientnet", "lora", {}),
    ("efficientnet", "vp-expansive", {"inner_size": 40, "mapping": "flm", "num_classes": 4}),
    ("efficientnet", "full", {}),
    ("dinov2", "ssf", {}),
    ("efficientnet", "ssf", {}),
]


@pytest.fixture(scope="module")
def real_backbones():
    def make(kind, source_head):
        name = {"dinov2": "offline:dinov2_vits14_imgfocus", "efficientnet": "offline:efficientnet_lite0"}
        return vprompt.backbone(name[kind], num_classes=None if source_head else 4, img_size=56)

    cache = {}
    return lambda kind, source_head: cache.setdefault((kind, source_head), make(kind, source_head))


@pytest.mark.offline_weights
@pytest.mark.parametrize("kind,method,options", REAL_CASES, ids=[f"{k}-{m}" for k, m, _ in REAL_CASES])
def test_real_backbone_trains_exactly_its_parameters(real_backbones, kind, method, options, tmp_path):
    source_head = "mapping" in options
    bb = real_backbones(kind, source_head)
    frozen = {k: v.clone() for k, v in bb.state_dict().items()}
    model = vprompt.attach(bb, method, **options)
    trainable = {n.removeprefix("backbone.") for n, p in model.named_parameters() if p.requires_grad}
    data = batches(bb, n=2)
    x = data[0][0]
    if method in ("ap", "aap", "vapt", "adapter", "lora"):  # zero-initialised: starts as the bare backbone
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), bb(x), rtol=0, atol=0)
    got_grad = train_steps(model, data)
    assert all(got_grad[id(p)] for p in model.method.parameters())
    state = {k.replace(".base_layer.", "."): (k, v) for k, v in bb.state_dict().items()}  # peft wraps
    added = {k for k, _ in state.values() if k.replace(".base_layer.", ".") not in frozen}
    changed = {k for k, (_, v) in state.items() if k in frozen and not torch.equal(v, frozen[k])}
    assert changed <= trainable and added <= trainable  # BatchNorm running statistics never change
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model.eval()(x)
        model.unload()
        loaded = vprompt.load_adapter(tmp_path, bb)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        loaded.unload()
        bb.load_state_dict(frozen)  # the next case starts from the pretrained weights again
