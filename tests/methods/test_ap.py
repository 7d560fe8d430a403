"""Activation prompts: every site of every family, three shapes, zero init, real weights."""

from __future__ import annotations

import pytest
import torch

import vprompt
from vprompt import MethodNotApplicable

FAMILIES = {
    "vit": ("vit_small_patch14_reg4_dinov2", dict(img_size=28, depth=2, embed_dim=24, num_heads=2)),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=56, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1,) * 4),
    ),
    "resnet": ("resnet18", dict(img_size=32)),
    "convnext": ("convnext_atto", dict(img_size=32)),
    "efficientnet": ("torchvision:mobilenet_v2", dict(img_size=32)),
}
EXPECTED_SHAPES = {  # layout -> shape option -> (activation shape -> prompt shape)
    "tokens": {"full": lambda s: s, "channel": lambda s: (1, s[1]), "spatial": lambda s: (s[0], 1)},
    "nchw": {"full": lambda s: s, "channel": lambda s: (s[0], 1, 1), "spatial": lambda s: (1, s[1], s[2])},
    "nhwc": {"full": lambda s: s, "channel": lambda s: (1, 1, s[2]), "spatial": lambda s: (s[0], s[1], 1)},
    "vector": {"full": lambda s: s, "channel": lambda s: s},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_every_shape_starts_as_the_backbone(family):
    name, kwargs = FAMILIES[family]
    bb = vprompt.backbone(name, pretrained=False, num_classes=3, **kwargs).eval()
    assert bb.family.name == family
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        reference = bb(x)
    for site in bb.sites.values():
        for shape, expected in EXPECTED_SHAPES[site.layout].items():
            model = vprompt.attach(bb, "ap", site=site.name, shape=shape)
            prompt = model.method.prompt
            assert tuple(prompt.shape) == expected(site.shape), (site.name, shape)
            assert model.trainable_parameters(head=False) == prompt.numel()
            with torch.no_grad():
                torch.testing.assert_close(model(x), reference, rtol=0, atol=0)  # zero init
                prompt.normal_()
                assert not torch.equal(model(x), reference), (site.name, shape)  # the prompt is used
            model.unload()


def test_prompt_is_added_to_the_site_output():
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=3, img_size=32).eval()
    raw, entering = [], []
    # registered before AP: sees the block's own output; the next block's pre-hook sees what enters it
    bb.site("block.3").module.register_forward_hook(lambda m, a, out: raw.append(out))
    bb.model.layer3[0].register_forward_pre_hook(lambda m, args: entering.append(args[0]))
    model = vprompt.attach(bb, "ap", site="block.3", shape="channel")
    with torch.no_grad():
        model.method.prompt.normal_()
        model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(entering[0], raw[0] + model.method.prompt, rtol=0, atol=0)


def test_clear_errors():
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=3, img_size=32)
    with pytest.raises(MethodNotApplicable, match="ap needs a site; .* has: input, embed"):
        vprompt.attach(bb, "ap")
    with pytest.raises(KeyError, match="no site 'block.99'"):
        vprompt.attach(bb, "ap", site="block.99")
    with pytest.raises(MethodNotApplicable, match="spatial prompt needs a spatial site"):
        vprompt.attach(bb, "ap", site="pre_logits", shape="spatial")
    with pytest.raises(MethodNotApplicable, match="unknown AP shape 'diagonal'"):
        vprompt.attach(bb, "ap", site="stage.1", shape="diagonal")
    with pytest.raises(ValueError, match="no option 'layer'; its options are: site, shape"):
        vprompt.attach(bb, "ap", layer=3)
    with pytest.raises(ValueError, match="unknown method 'apx'"):
        vprompt.attach(bb, "apx")
    # a failed attach leaves the backbone as it was
    assert all(p.requires_grad for p in bb.parameters())
    assert not bb.site("stage.1").module._forward_hooks


@pytest.mark.offline_weights
def test_ap_on_real_efficientnet_keeps_batchnorm_statistics():
    bb = vprompt.backbone("offline:efficientnet_lite0", num_classes=4, img_size=64)
    model = vprompt.attach(bb, "ap", site="stage.4", shape="full")
    frozen = {k: v.clone() for k, v in bb.state_dict().items()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 4, (4,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        assert model.method.prompt.grad.abs().sum() > 0
        opt.step()
    for key, value in bb.state_dict().items():
        if not key.startswith("model.classifier"):
            assert torch.equal(value, frozen[key]), key  # running_mean / running_var included
    assert model.trainable_parameters(head=False) == 112 * 4 * 4
