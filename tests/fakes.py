"""Fake data for the tests, in the real layouts, with tiny real image files written by PIL: a data config,
an image writer and the one fake VTAB-1k root builder (the data tests' ``vtab_root`` fixture and the
sweep tests both use it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CONFIG = {
    "input_size": (3, 32, 32),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "interpolation": "bicubic",
}


def write_image(path: Path, seed: int, size: int = 12, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


#: a few images per VTAB-1k split list (sizes that ``data check`` reports as wrong)
VTAB_TINY = {"train800": 4, "val200": 2, "train800val200": 6, "test": 3}
#: the sizes VTAB-1k requires (``test`` is free; 100 keeps it small)
VTAB_FULL = {"train800": 800, "val200": 200, "train800val200": 1000, "test": 100}


def vtab_root(
    root: Path,
    tasks=("eurosat",),
    sizes: dict[str, int] = VTAB_TINY,
    images: int | None = None,
    image_size: int = 12,
) -> Path:
    """``<root>/<task>/{train800,val200,train800val200,test}.txt`` listing ``sizes[split]`` JPEGs under
    ``images/<split>/``, labels cycling through 10 classes. ``images=None``: each line its own image;
    ``images=n``: the lines cycle through ``n`` images of their split (large lists, few files)."""
    for task in tasks:
        for split, n in sizes.items():
            distinct = n if images is None else min(images, n)
            for i in range(distinct):
                write_image(root / task / "images" / split / f"{i:06d}.jpg", len(split) * 100 + i, image_size)
            lines = [f"images/{split}/{i % distinct:06d}.jpg {i % 10}" for i in range(n)]
            (root / task / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root
