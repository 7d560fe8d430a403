"""Helpers for the sweep and report tests: a tiny run config, a fake ``train`` and a fake VTAB-1k root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vprompt.engine.config import to_dict
from vprompt.engine.run import as_config
from vprompt.engine.rundir import RunDir

#: a random-init ViT-Tiny at 32 px (2×2 patches) on synthetic data: about a second per run
TINY = dict(
    backbone="vit_tiny_patch16_224",
    random_init=True,
    img_size=32,
    data="synthetic:4x32",
    epochs=1,
    batch_size=16,
    lr=0.05,
    progress=False,
    device="cpu",
)


def one_thread():
    """Run a test module's tiny runs on one thread (they gain nothing from more, and stay quick when the
    machine is shared); use as ``yield from one_thread()`` in a module-scoped autouse fixture."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeTrain:
    """Stands in for ``vprompt.train``: writes a run directory whose summary ``results(config)`` gives."""

    def __init__(self, results):
        self.results = results
        self.calls: list[dict] = []

    def __call__(self, config, output, resume=False):
        config = to_dict(as_config(config, {}))
        self.calls.append(config)
        run = RunDir(output)
        run.write_config(config)
        summary = {
            "backbone": config["backbone"],
            "method": config["method"],
            "method_options": config["method_options"],
            "data": config["data"],
            "final": config["final"],
            "seed": config["seed"],
            "trainable_parameters": 1000,
            "trainable_parameters_without_head": 900,
            "train_seconds": 1.0,
            "peak_memory_mib": 100.0,
            **self.results(config),
        }
        summary.setdefault("accuracy", summary.get("test_accuracy", summary.get("val_accuracy")))
        run.write_summary(summary)
        return summary


def vtab_root(root: Path, tasks=("eurosat",)) -> Path:
    """``<root>/<task>/{train800,val200,train800val200,test}.txt`` of the required sizes (10 classes),
    every list cycling through 10 tiny JPEGs of its split (train with ``train_size`` to keep it quick)."""
    sizes = {"train800": 800, "val200": 200, "train800val200": 1000, "test": 100}
    for task in tasks:
        for split, n in sizes.items():
            for i in range(10):
                path = root / task / "images" / split / f"{i:06d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(len(split) * 100 + i)
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
            lines = [f"images/{split}/{i % 10:06d}.jpg {i % 10}" for i in range(n)]
            (root / task / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root
