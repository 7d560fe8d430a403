"""Every family maps onto named sites whose shapes come from a dry forward (tiny random-weight models)."""

from __future__ import annotations

import pytest
import torch

import vprompt
from vprompt.backbones.families import FAMILIES

# (backbone name, timm kwargs, family, expected {site: shape})
TINY = [
    (
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=4, depth=2, embed_dim=24, num_heads=2),
        "vit",
        {
            "input": (3, 32, 32),
            "embed": (65, 24),
            "block.0": (65, 24),
            "block.1": (65, 24),
            "pre_logits": (24,),
        },
    ),
    (  # DINOv2 with 4 register tokens, patch 14: 1 CLS + 4 registers + 2x2 patches
        "vit_small_patch14_reg4_dinov2",
        dict(img_size=28, depth=2, embed_dim=24, num_heads=2),
        "vit",
        {"embed": (9, 24), "block.1": (9, 24), "pre_logits": (24,)},
    ),
    (
        "deit_tiny_distilled_patch16_224",
        dict(img_size=32, patch_size=8, depth=1, embed_dim=24, num_heads=2),
        "vit",
        {"embed": (18, 24), "block.0": (18, 24)},
    ),
    (
        "swin_tiny_patch4_window7_224",
        dict(img_size=56, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1)),
        "swin",
        {"embed": (14, 14, 24), "block.0": (14, 14, 24), "stage.1": (7, 7, 48), "stage.3": (2, 2, 192)},
    ),
    (
        "resnet18",
        dict(img_size=32),
        "resnet",
        {"embed": (64, 8, 8), "block.0": (64, 8, 8), "stage.0": (64, 8, 8), "stage.3": (512, 1, 1)},
    ),
    (
        "torchvision:resnet18",
        dict(img_size=32),
        "resnet",
        {"embed": (64, 8, 8), "block.7": (512, 1, 1), "stage.3": (512, 1, 1), "pre_logits": (512,)},
    ),
    (
        "convnext_atto",
        dict(img_size=32),
        "convnext",
        {"embed": (40, 8, 8), "stage.0": (40, 8, 8), "stage.3": (320, 1, 1), "pre_logits": (320,)},
    ),
    (
        "mobilenetv2_050",
        dict(img_size=32),
        "efficientnet",
        {"embed": (16, 16, 16), "stage.0": (8, 16, 16), "stage.6": (160, 1, 1)},
    ),
    (
        "torchvision:mobilenet_v2",
        dict(img_size=32),
        "efficientnet",
        {"embed": (32, 16, 16), "stage.0": (16, 16, 16), "stage.1": (24, 8, 8), "stage.6": (320, 1, 1)},
    ),
    (
        "torchvision:efficientnet_b0",
        dict(img_size=32),
        "efficientnet",
        {"stage.0": (16, 16, 16), "stage.6": (320, 1, 1), "pre_logits": (1280,)},
    ),
]


def build(name: str, kwargs: dict, num_classes: int = 5) -> vprompt.Backbone:
    kwargs = dict(kwargs)
    img_size = kwargs.pop("img_size")
    return vprompt.backbone(name, pretrained=False, num_classes=num_classes, img_size=img_size, **kwargs)


@pytest.mark.parametrize("name,kwargs,family,expected", TINY, ids=[t[0] for t in TINY])
def test_family_sites_and_shapes(name, kwargs, family, expected):
    bb = build(name, kwargs)
    assert bb.family.name == family
    # the families' matches are disjoint, the generic one last: their registration order is irrelevant
    assert [f.name for f in FAMILIES.values() if f.matches(bb.model)] == [family, "generic"]
    names = list(bb.sites)
    assert names[0] == "input" and names[-1] == "pre_logits"
    assert bb.site("input").shape == (3, kwargs["img_size"], kwargs["img_size"])
    for site, shape in expected.items():
        assert bb.site(site).shape == shape, site
    # sites are listed in forward order, and every CNN/Swin stage closes on the block it ends with
    assert [s.index for s in bb.sites.values()] == list(range(len(names)))
    for stage in (n for n in names if n.startswith("stage.")):
        previous = names[names.index(stage) - 1]
        assert previous.startswith("block.") and bb.site(previous).module is bb.site(stage).module


def test_block_counts_follow_the_architecture():
    bb = build("resnet18", dict(img_size=32))
    assert sum(n.startswith("block.") for n in bb.sites) == 8
    assert sum(n.startswith("stage.") for n in bb.sites) == 4
    bb = build("torchvision:mobilenet_v2", dict(img_size=32))
    assert sum(n.startswith("block.") for n in bb.sites) == 17  # 1+2+3+4+3+3+1 inverted residuals
    assert sum(n.startswith("stage.") for n in bb.sites) == 7


def test_vit_token_sites_know_prefix_and_grid():
    bb = build("vit_small_patch14_reg4_dinov2", dict(img_size=42, depth=1, embed_dim=24, num_heads=2))
    site = bb.site("block.0")
    assert site.prefix_tokens == 5 and site.grid == (3, 3) and site.shape == (14, 24)
    assert bb.site("pre_logits").grid is None


@pytest.mark.parametrize("name,kwargs", [(TINY[i][0], TINY[i][1]) for i in (0, 1, 3, 5, 6, 8)])
def test_site_hook_reads_and_replaces_the_activation(name, kwargs):
    bb = build(name, kwargs).eval()
    x = torch.randn(2, *bb.input_size)
    site_name = [n for n in bb.sites if n.startswith("block.")][0]
    site = bb.site(site_name)
    seen = []
    handle = site.hook(lambda a: seen.append(a.shape))
    reference = bb(x)
    handle.remove()
    assert seen == [torch.Size((2, *site.shape))]

    handle = site.hook(lambda a: a + torch.randn_like(a))
    changed = bb(x)
    handle.remove()
    assert not torch.equal(changed, reference)
    assert torch.equal(bb(x), reference)  # removing the hook restores the backbone exactly


def test_pre_logits_hook_sees_the_classifier_input():
    bb = build("resnet18", dict(img_size=32)).eval()
    x = torch.randn(2, 3, 32, 32)
    captured = []
    handle = bb.site("pre_logits").hook(captured.append)
    logits = bb(x)
    handle.remove()
    torch.testing.assert_close(bb.head(captured[0]), logits)


def test_unknown_site_lists_the_valid_ones():
    bb = build("resnet18", dict(img_size=32))
    with pytest.raises(KeyError, match="stage.0"):
        bb.site("block.99")


def test_generic_family_for_unadapted_models():
    bb = vprompt.backbone("torchvision:shufflenet_v2_x0_5", pretrained=False, num_classes=4, img_size=64)
    assert bb.family.name == "generic" == list(FAMILIES)[-1]
    assert list(bb.sites) == ["input", "pre_logits"]
    assert bb.site("pre_logits").shape == (1024,) and bb.num_classes == 4


def test_sites_table_lists_every_site():
    bb = build("convnext_atto", dict(img_size=32))
    table = bb.sites_table()
    for name, site in bb.sites.items():
        assert f"{name} " in table or table.endswith(name)
        assert "×".join(map(str, site.shape)) in table


# every family, plus the timm CNN variants whose heads differ (EfficientNet, MobileNetV3) and Swin V2
RESUMABLE = [(t[0], t[1]) for t in TINY] + [
    ("efficientnet_b0", dict(img_size=32)),
    ("mobilenetv3_small_050", dict(img_size=32)),
    (
        "swinv2_cr_tiny_ns_224",
        dict(img_size=64, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1), window_size=4),
    ),
    ("swinv2_tiny_window8_256", dict(img_size=64, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1))),
]


@pytest.mark.parametrize("name,kwargs", RESUMABLE, ids=[r[0] for r in RESUMABLE])
def test_forward_from_every_site_equals_the_whole_forward(name, kwargs):
    """The frozen-prefix cache's contract: capture a site's raw activation, continue from it."""
    bb = build(name, kwargs).eval()
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        expected = bb(x)
        for site in bb.sites.values():
            if name.startswith("deit") and site.name == "pre_logits":  # two heads, averaged
                assert not bb.can_resume_at(site.name)
                continue
            assert bb.can_resume_at(site.name), site.name
            raw = site.capture(bb.model, x)
            assert raw.shape[1:] == site.shape
            torch.testing.assert_close(bb.forward_from(site.name, raw), expected, msg=site.name)


def test_forward_from_applies_the_hooks_at_the_site_and_after():
    bb = build(*TINY[0][:2]).eval()
    x = torch.randn(2, *bb.input_size)
    h1 = bb.site("block.0").hook(lambda a: a * 2)
    h2 = bb.site("block.1").hook(lambda a: a + 1)
    with torch.no_grad():
        raw = bb.site("block.0").capture(bb.model, x)  # before the hook at block.0
        hooked = bb(x)
        torch.testing.assert_close(bb.forward_from("block.0", raw), hooked)
        h1.remove()
        h2.remove()
        assert not torch.allclose(bb(x), hooked)
    assert not any(m._forward_hooks for m in bb.modules())


def test_a_compiled_model_guards_on_its_own_hooks_only():
    """A site's hooks live on its module, not in a global registry: a compiled model's guards do not
    read other models' hooks, so another hooked model collected while dynamo compiles (between its
    tracing and its guard building: here, inside the backend) breaks nothing; and removing the last
    hook leaves the module as it was."""
    import gc

    others = [build(*TINY[0][:2]) for _ in range(3)]
    handles = [o.site("block.0").hook(lambda a: a) for o in others]
    module = others[0].site("block.0").module
    before = {k: v for k, v in vars(module).items() if k != "_vprompt_site_chains"}
    handles[0].remove()
    assert vars(module) == before
    del module

    def backend(graph, _inputs):
        handles.clear()
        others.clear()
        gc.collect()
        return graph.forward

    # linear, training: the CLS-only last block asks which functions are hooked at the last block
    model = vprompt.attach(build(*TINY[0][:2]), "linear").train()
    x = torch.randn(2, *model.input_size)
    expected = model(x)
    assert torch.equal(torch.compile(model, backend=backend)(x), expected)
