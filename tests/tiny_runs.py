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
#: the sweeps' and reports' tiny run: one epoch, on the CPU (a sweep is many runs)
#: the command-line form of TINY's model and data (after ``train`` or ``sweep <kind>``)
TINY_CLI = [
    "--backbone",
    TINY["backbone"],
    "--random-init",
    "--img-size",
    str(TINY["img_size"]),
    "--data",
    TINY["data"],
]
TINY_SWEEP = dict(TINY, epochs=1, device="cpu")
#: a tiny run for a recipe to sit under: two epochs and no ``lr``, so that the recipe's own applies
TINY_UNDER_RECIPE = {k: v for k, v in TINY.items() if k != "lr"} | dict(epochs=2)

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
