"""Tiny runs: a random-init ViT-Tiny at 32 px (2×2 patches) on synthetic data, a second or so each."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

TINY = dict(
    backbone="vit_tiny_patch16_224",
    random_init=True,
    img_size=32,
    data="synthetic:4x32",
    epochs=3,
    batch_size=16,
    lr=0.05,
    progress=False,
)

#: metrics that measure time and therefore differ between otherwise identical runs
TIMING = {"epoch_seconds", "train_images_per_second"}


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "vprompt_model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def strip_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
