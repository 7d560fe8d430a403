"""The inputs of E²VPT's official-code reference (``fixtures/e2vpt_reference.json``), built here.

The private script that ran the official code (ChengHan111/E2VPT) imported these functions and copied
the tensors they build bit for bit into the official modules; ``fixtures/README.md`` says how. Changing
anything here invalidates the fixture. Everything is drawn in float64, whose ``torch.randn`` draws are the
same under every CPU kernel (float32 draws differ by an ulp in the non-vectorised one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from test_official_reference import redraw_

import vprompt
from vprompt.methods.e2vpt import E2VPT, E2VPTConfig
from vprompt.model import TunedModel

NUM_CLASSES = 10
LABELS = (3, 7)
WEIGHT_SEED, INPUT_SEED, METHOD_SEED = 0, 1, 2
#: a tiny ViT: 4×4 grid of 8-px patches + CLS, 3 blocks, 4 heads of 12 dims
VIT = dict(img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=4)
#: the official model's P_VK options for each case (everything else: the repository's defaults)
CASES = {
    "shared-kv": E2VPTConfig(num_prompts=5, kv_prompts=3),
    "separate-kv": E2VPTConfig(num_prompts=5, kv_prompts=3, share_kv=False),
    "masks": E2VPTConfig(num_prompts=5, kv_prompts=3, learn_masks=True),
}


@contextlib.contextmanager
def float64_default() -> Iterator[None]:
    """Build and draw in float64 (``redraw_`` draws in the default dtype), whatever the caller's default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def reference_backbone() -> vprompt.Backbone:
    """timm ``vit_tiny_patch16_224`` at :data:`VIT`, a 10-class head, every parameter redrawn (seed 0);
    built and drawn in float64."""
    with float64_default():
        backbone = vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES, **VIT)
        redraw_(backbone.model.named_parameters(), WEIGHT_SEED)
    return backbone.eval()


def reference_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images ``randn(2, 3, 32, 32)`` (seed 1, float64) and their labels."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    return torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64), torch.tensor(LABELS)


def reference_model(backbone: vprompt.Backbone, case: str) -> TunedModel:
    """E²VPT attached with its parameters redrawn (seed 2; masks too; float64), in eval mode."""
    with float64_default():
        model = TunedModel(backbone, E2VPT(CASES[case]))
        redraw_(model.method.named_parameters(), METHOD_SEED)
    return model.eval()
