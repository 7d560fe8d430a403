"""Helpers for the data tests: a data config and a tiny-image writer."""

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


VTAB_TINY = {"train800": 4, "val200": 2, "train800val200": 6, "test": 3}
