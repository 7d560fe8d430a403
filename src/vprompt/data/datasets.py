"""Map-style datasets that yield ``(image, label)``; the image is a PIL RGB image or, with a transform, a tensor.

Every dataset here checks its labels when it is built (a label outside ``[0, num_classes)`` raises
:class:`DataError` naming the file and line it came from) and decodes images lazily: an image that cannot be
read raises :class:`DataError` naming the file when that item is loaded. Nothing is skipped.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

#: the file name endings read as images where a folder is searched for them
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: How torch's DataLoader re-raises an exception from a worker: ``exc_type(msg)`` with this header on msg.
_WORKER_HEADER = re.compile(r"Caught \S+ in .+?\.\nOriginal Traceback \(most recent call last\):\n", re.S)


def _original_message(message: str) -> str:
    """The message a worker's exception had, recovered from torch's re-raise text (else ``message``).

    torch formats the worker's whole traceback into the message of a new exception of the same type;
    the original message is what follows ``<type>: `` on the first unindented line of the last traceback.
    """
    if not isinstance(message, str) or not _WORKER_HEADER.match(message):
        return message
    last = message.rsplit("Traceback (most recent call last):\n", 1)[-1]
    lines = last.rstrip("\n").split("\n")
    for i, line in enumerate(lines):
        if line and not line[0].isspace():
            match = re.match(r"[\w.]+(?:: (.*))?$", line, re.S)
            if match is None:
                return message
            return "\n".join([match.group(1) or "", *lines[i + 1 :]]).strip("\n")
    return message


class DataError(ValueError):
    """Bad or missing data: the message names the file and the problem.

    Raised in a DataLoader worker, it reaches the main process with its message exact: torch re-raises
    ``DataError(<worker traceback>)``, and the constructor recovers the original one-line message.
    """

    def __init__(self, message: str = ""):
        super().__init__(_original_message(message))


class MissingFileError(DataError, FileNotFoundError):
    """A file the data names does not exist (a :class:`DataError` and a ``FileNotFoundError``)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, upright: an EXIF orientation tag (a phone's rotated photo) is applied
    (``ImageOps.exif_transpose``). 16-bit greyscale (``I;16*``, and ``I``, read as 16-bit values) is
    scaled to 8 bits by its high byte (``value >> 8``), not clipped at 255 as ``convert("RGB")`` does.
    An image with a transparent colour (a palette PNG or GIF) goes through RGBA (no PIL warning); the
    colour under the transparency is kept, as for RGBA images."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
    if "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


class ToRGB:
    """Convert any PIL image (greyscale, 16-bit, palette, RGBA) to 3-channel 8-bit RGB (:func:`to_rgb`)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_rgb(image)

    def __repr__(self) -> str:
        return "ToRGB()"


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB (:func:`to_rgb`), or raise an error naming the file."""
    if not path.is_file():
        raise MissingFileError(f"{path}: image file is missing")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except Exception as e:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError...)
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def image_files(path: str | Path) -> list[Path]:
    """``path`` itself when it is a file; for a folder, the image files under it (searched recursively,
    names starting with ``.`` and files with other endings skipped), sorted by path."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingFileError(f"{path}: no such image file or folder")
    found = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.is_file()
    )
    if not found:
        raise DataError(f"{path}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


class Sample(tuple):
    """Where one item came from: ``(path, label, origin)``; origin is ``"file:line"`` for error messages."""

    __slots__ = ()

    def __new__(cls, path: Path, label: int, origin: str = ""):
        return super().__new__(cls, (Path(path), int(label), origin))

    path = property(lambda self: self[0])
    label = property(lambda self: self[1])
    origin = property(lambda self: self[2])


def check_labels(samples: Sequence[Sample], num_classes: int, source: str) -> None:
    """Raise :class:`DataError` for the first label outside ``[0, num_classes)``, naming where it was read."""
    for s in samples:
        if not 0 <= s.label < num_classes:
            where = s.origin or source
            raise DataError(f"{where}: label {s.label} out of range [0, {num_classes}) for {s.path.name}")


class ImageListDataset(torch.utils.data.Dataset):
    """Images listed as ``(path, label)`` samples (VTAB lists, FGVC/CoOp json, class folders)."""

    def __init__(
        self, samples: Sequence[Sample], num_classes: int, source: str, transform: Callable | None = None
    ):
        self.samples = list(samples)
        self.num_classes = num_classes
        self.source = source
        self.transform = transform
        check_labels(self.samples, num_classes, source)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [s.label for s in self.samples]

    def __getitem__(self, index: int):
        s = self.samples[index]
        image = open_image(s.path)
        if self.transform is not None:
            image = self.transform(image)
        return image, s.label


class ArrayDataset(torch.utils.data.Dataset):
    """Images held in a ``uint8`` array ``(N, H, W)`` or ``(N, H, W, 3)`` with integer labels."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        source: str,
        transform: Callable | None = None,
    ):
        if len(images) != len(labels):
            raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            raise DataError(
                f"{source}: label {int(labels[bad[0]])} at index {int(bad[0])} out of range [0, {num_classes})"
            )
        self.images, self.labels = images, labels.astype(np.int64)
        self.num_classes, self.source, self.transform = num_classes, source, transform

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __getitem__(self, index: int):
        image = to_rgb(Image.fromarray(self.images[index]))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class IndexedDataset(torch.utils.data.Dataset):
    """The items ``indices`` of ``base``, in that order (keeps ``targets`` and ``num_classes``)."""

    def __init__(self, base, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)
        self.num_classes = getattr(base, "num_classes", None)
        self.source = getattr(base, "source", "")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> list[int] | None:
        targets = getattr(self.base, "targets", None)
        return None if targets is None else [targets[i] for i in self.indices]

    def __getitem__(self, index: int):
        return self.base[self.indices[index]]


def take(dataset, indices: Sequence[int]):
    """A dataset of ``dataset``'s items at ``indices``, of the same kind where that is cheap.

    Image lists keep their samples (so checks still see the files), arrays are indexed directly,
    anything else is wrapped in an :class:`IndexedDataset`.
    """
    indices = [int(i) for i in indices]
    if isinstance(dataset, ImageListDataset):
        samples = [dataset.samples[i] for i in indices]
        return ImageListDataset(samples, dataset.num_classes, dataset.source, dataset.transform)
    if isinstance(dataset, ArrayDataset):
        index = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(
            dataset.images[index],
            dataset.labels[index],
            dataset.num_classes,
            dataset.source,
            dataset.transform,
        )
    return IndexedDataset(dataset, indices)


def subset(dataset, n: int, seed: int = 0):
    """``n`` items of ``dataset``, as equally many per class as the data allows, chosen reproducibly.

    Each class's items are shuffled with ``seed``; classes then take turns (lowest label first) until
    ``n`` items are chosen. The result keeps the dataset's order. ``n >= len(dataset)`` returns it whole.
    """
    if n < 1:
        raise ValueError(f"a subset needs at least 1 item, got {n}")
    if n >= len(dataset):
        return dataset
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(f"cannot draw a class-balanced subset of {type(dataset).__name__}: no targets")
    rng = np.random.default_rng(seed)
    labels = np.asarray(targets)
    queues = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return take(dataset, sorted(chosen))


def read_idx_gz(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not, straight into a read-only numpy array.

    The array is kept for the process, keyed by the file's path, inode, size and modification time, so
    the runs of a sweep decompress each file once (about 0.5 s saved per Fashion-MNIST run here)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX data ({e})") from e
    return _read_idx(path, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx(path: Path, inode: int, size: int, mtime_ns: int) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = data[0:2], data[2], data[3]
        if zero != b"\x00\x00" or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)  # read-only: shared safely
        return array.reshape(shape)
    except (OSError, ValueError, IndexError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX data ({e})") from e


class SyntheticDataset(torch.utils.data.Dataset):
    """Deterministic random RGB images with a learnable class signal (for tests and smoke runs).

    Each class has a fixed smooth colour pattern; an item is ``0.6 * pattern[label] + 0.4 * noise`` with the
    noise seeded by ``(seed, index)``, so the same spec, split and index always give the same image.
    """

    def __init__(
        self, num_classes: int, size: int, length: int, seed: int, transform: Callable | None = None
    ):
        self.num_classes, self.size, self.length, self.seed = num_classes, size, length, seed
        self.transform = transform
        g = np.random.default_rng(12345 + num_classes * 1000 + size)
        coarse = g.random((num_classes, 4, 4, 3))
        # upsample the 4x4 patterns to the image size (nearest), giving a blocky but learnable signal
        rep = -(-size // 4)
        self.patterns = np.repeat(np.repeat(coarse, rep, axis=1), rep, axis=2)[:, :size, :size]

    def __len__(self) -> int:
        return self.length

    @property
    def targets(self) -> list[int]:
        return [i % self.num_classes for i in range(self.length)]

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        label = index % self.num_classes
        noise = np.random.default_rng((self.seed, index)).random((self.size, self.size, 3))
        pixels = (0.6 * self.patterns[label] + 0.4 * noise) * 255
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class TransformedDataset(torch.utils.data.Dataset):
    """Wrap a dataset that yields PIL images (e.g. a torchvision one) and apply ToRGB plus a transform."""

    def __init__(self, base, num_classes: int, source: str, transform: Callable | None = None):
        self.base, self.num_classes, self.source, self.transform = base, num_classes, source, transform

    def __len__(self) -> int:
        return len(self.base)

    @property
    def targets(self) -> list[int] | None:
        for attr in ("targets", "labels", "_labels"):
            value = getattr(self.base, attr, None)
            if value is not None:
                return [int(v) for v in value]
        samples = getattr(self.base, "_samples", None) or getattr(self.base, "samples", None)
        if samples is not None:
            return [int(s[1]) for s in samples]
        return None

    def __getitem__(self, index: int):
        try:
            image, label = self.base[index]
        except (OSError, SyntaxError) as e:
            raise DataError(f"{self.source}: item {index}: cannot decode image ({e})") from e
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        image = to_rgb(image)
        if not 0 <= int(label) < self.num_classes:
            raise DataError(
                f"{self.source}: item {index}: label {label} out of range [0, {self.num_classes})"
            )
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)
