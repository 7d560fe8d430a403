"""Size-like method options are checked against what they apply to when the method is attached: one line
naming the option, the value and the bound, before anything the size would make slow or huge is built."""

from __future__ import annotations

import re

import pytest

import vprompt
from vprompt.methods import MethodNotApplicable

#: a ViT whose sites have a 2×2 patch grid (32 px, 16-px patches), embedding size 24, MLP width 96
VIT = dict(img_size=32, depth=2, embed_dim=24, num_heads=2)


def vit(**kwargs):
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=3, **VIT, **kwargs)


def resnet():
    return vprompt.backbone("resnet18", pretrained=False, num_classes=3, img_size=32)


# (backbone, method, options, the message's start, the bound)
CASES = [
    (vit, "aap", {"site": "block.0", "kernel": 999}, "aap kernel=999", "1 to 5 (2·side+1 for the 2×2 grid"),
    (resnet, "aap", {"site": "stage.3", "kernel": 9}, "aap kernel=9", "1 to 3 (2·side+1 for the 1×1 grid"),
    (vit, "aap", {"site": "block.0", "hidden": 10**6}, "aap hidden=1000000", "1 to 96 (4× the 24 channels"),
    (vit, "aap", {"site": "block.0", "hidden": 0}, "aap hidden=0", "1 to 96"),
    (vit, "aap", {"site": "block.0", "kernel": -1}, "aap kernel=-1", "1 to 5"),
    (
        vit,
        "vpt-shallow",
        {"num_prompts": 10**6},
        "vpt-shallow num_prompts=1000000",
        "1 to 20 (4× the 5 tokens",
    ),
    (vit, "vpt-deep", {"num_prompts": 0}, "vpt-deep num_prompts=0", "1 to 20"),
    (vit, "vapt", {"num_prompts": 21}, "vapt num_prompts=21", "1 to 20"),
    (vit, "gatevpt", {}, "gatevpt num_prompts=100", "1 to 20 (4× the 5 tokens"),  # the default
    (vit, "vapt", {"hidden": 97}, "vapt hidden=97", "1 to 96 (4× the embedding size 24)"),
    (vit, "vapt", {"kernel": 3}, "vapt kernel=3", "1 to 2 (the 2×2 patch grid"),
    (
        vit,
        "lora",
        {"r": 10**6},
        "lora r=1000000",
        "1 to 24 (the largest rank of an update of target blocks.0",
    ),
    (resnet, "lora", {"r": 10**4}, "lora r=10000", "1 to 64 (the largest rank"),
    (vit, "adapter", {"r": 25}, "adapter r=25", "1 to 24 (the width 24 of the MLPs"),
    (vit, "vp-pad", {"width": 16}, "vp-pad width=16", "1 to 15 (two borders must leave pixels"),
    (vit, "vp-expansive", {"inner_size": 10**5}, "vp-expansive inner_size=100000", "1 to 31 (smaller than"),
]


@pytest.mark.parametrize(("make", "method", "options", "start", "bound"), CASES, ids=[c[3] for c in CASES])
def test_a_size_beyond_its_bound_is_refused_at_attach_naming_option_value_and_bound(
    make, method, options, start, bound
):
    bb = make()
    with pytest.raises(MethodNotApplicable) as caught:
        vprompt.attach(bb, method, **options)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{start} is out of range: it must be from {bound}"), message
    assert all(p.requires_grad for p in bb.parameters())  # the failed attach left the backbone as it was
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bb.modules())


@pytest.mark.parametrize(
    ("make", "method", "options"),
    [
        (vit, "aap", {"site": "block.0", "kernel": 5, "hidden": 96}),
        (resnet, "aap", {"site": "stage.3", "kernel": 3}),  # the default kernel fits a 1×1 grid
        (vit, "aap", {"site": "pre_logits"}),
        (vit, "vpt-deep", {"num_prompts": 20}),
        (vit, "vapt", {"num_prompts": 20, "hidden": 96, "kernel": 2}),
        (vit, "gatevpt", {"num_prompts": 20}),
        (vit, "lora", {"r": 24}),
        (vit, "adapter", {"r": 24}),
        (vit, "vp-pad", {"width": 15}),
        (vit, "vp-expansive", {"inner_size": 31}),
    ],
    ids=lambda v: re.sub(r"\W+", "-", str(v)).strip("-") if not callable(v) else v.__name__,
)
def test_sizes_at_their_bound_are_accepted(make, method, options):
    model = vprompt.attach(make(), method, **options)
    model.unload()
