"""Data given as Python objects: ``vprompt.train(data=dataset)``, ``data=(train, val)`` or a dict of splits.

A dataset is any map-style one (``len`` and indexing: a ``torch.utils.data.Dataset``, a Hugging Face
``datasets.Dataset``). Its items are ``(image, label)`` pairs or dicts (image and label columns: the first
``Image`` / ``ClassLabel`` feature where it has ``features``, else the keys ``image`` and ``label``).
A PIL image (or a uint8 array) gets the run's transforms; a tensor is taken as it is and must have the
model's input shape. Class names: ``classes`` (torchvision), ``class_names``, or the label feature's
``names``, looked up through ``Subset`` / ``ConcatDataset``; else ``class_<i>`` for the labels found.

Splits: ``train``, ``val`` (also ``validation``, ``valid``, ``dev``), ``test``, ``trainval`` (train + val
unless given); without ``val``, a fixed 10% of ``train`` is held out, as for every train-only source.
The run records ``python:<type>#<fingerprint>`` (item counts, class names, labels, a sample of the
items' bytes hashed); a run folder cannot hold the objects, so the spec alone is refused with a line
saying to pass the data again through the Python API, where the same fingerprint is accepted.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..datasets import DataError, to_rgb
from .base import DatasetInfo, Source, generic_names, register_source, with_held_out

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val"}
SPLIT_NAMES |= {"test": "test", "trainval": "trainval"}
IMAGE_KEYS, LABEL_KEYS = ("image", "img", "pixel_values"), ("label", "labels")
#: items per split whose bytes go into the fingerprint
SAMPLE = 8
REFUSED = (
    "{spec}: this data was given to vprompt as Python objects, which a run folder does not hold; pass "
    "the dataset again through the Python API: vprompt.train(..., data=dataset, output=RUN, resume=True) "
    "or vprompt.evaluate_run(RUN, data=dataset)"
)


@register_source("python", usage="python:<dataset> (Python objects: vprompt.train(data=dataset) only)")
def _refused(spec: str, arg: str, root: Path | None) -> Source:
    raise ValueError(REFUSED.format(spec=spec))


def _dataset_like(obj) -> bool:
    return (
        hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not isinstance(obj, str | bytes | tuple)
    )


def _splits(data) -> dict[str, object]:
    if isinstance(data, Mapping):
        unknown = [k for k in data if SPLIT_NAMES.get(str(k).lower()) is None]
        if unknown:
            raise ValueError(f"data splits {unknown} are unknown; name them train, val, test or trainval")
        parts = {SPLIT_NAMES[str(k).lower()]: v for k, v in data.items()}
    elif isinstance(data, tuple) and len(data) in (2, 3) and all(_dataset_like(d) for d in data):
        parts = dict(zip(("train", "val", "test"), data, strict=False))
    else:
        parts = {"train": data}
    for name, ds in parts.items():
        if not _dataset_like(ds):
            raise ValueError(
                f"data: expected a dataset spec string, a map-style dataset (len and indexing), a pair "
                f"(train, val) or a dict of splits; the {name} data is {type(ds).__name__}{_hint(ds)}"
            )
        if len(ds) == 0:
            raise DataError(f"data: the {name} dataset ({type(ds).__name__}) holds no items")
    return parts


def _hint(obj) -> str:
    """What to pass instead of a loader or an iterable-style dataset (HF Trainer and Lightning habits)."""
    if isinstance(obj, torch.utils.data.DataLoader):
        return (
            " (a DataLoader: pass its dataset, loader.dataset; vprompt builds its own loaders from "
            "batch_size and workers)"
        )
    if isinstance(obj, torch.utils.data.IterableDataset):
        return " (an iterable-style dataset: vprompt needs len and indexing, to subset, hold out and resume)"
    return ""


def _layers(ds) -> list:
    """``ds`` and the datasets inside it (``Subset.dataset``, ``ConcatDataset.datasets[0]``)."""
    found = [ds]
    while len(found) < 8:
        inner = getattr(found[-1], "dataset", None)
        if inner is None and getattr(found[-1], "datasets", None) is not None:
            inner = found[-1].datasets[0]
        if inner is None or inner is found[-1]:
            break
        found.append(inner)
    return found


def _feature(ds, kind: str) -> str | None:
    features = getattr(ds, "features", None)
    if not isinstance(features, Mapping):
        return None
    return next((k for k, f in features.items() if type(f).__name__ == kind), None)


class Reader:
    """``item → (item[image], item[label])``: keys 0 and 1 for pairs, column names for dicts."""

    def __init__(self, image, label):
        self.image, self.label = image, label

    def __call__(self, item):
        return item[self.image], item[self.label]


def _reader(ds, what: str) -> Reader:
    item = ds[0]
    if isinstance(item, tuple | list) and len(item) >= 2:
        return Reader(0, 1)
    if isinstance(item, Mapping):
        image = _feature(ds, "Image") or next((k for k in IMAGE_KEYS if k in item), None)
        label = _feature(ds, "ClassLabel") or next((k for k in LABEL_KEYS if k in item), None)
        if image is None or label is None:
            raise DataError(
                f"{what}: items are dicts with keys {list(item)}; vprompt reads the keys image and label"
            )
        return Reader(image, label)
    raise DataError(f"{what}: items are {type(item).__name__}; expected (image, label) pairs or dicts")


def _label(value, what: str) -> int:
    if isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"{what}: label {value!r} is not a class index (an integer)")
    return int(value)


def _class_names(ds, label_key) -> tuple[str, ...] | None:
    for layer in _layers(ds):
        names = getattr(layer, "classes", None) or getattr(layer, "class_names", None)
        features = getattr(layer, "features", None)
        if names is None and label_key is not None and isinstance(features, Mapping):
            names = getattr(features.get(label_key), "names", None)
        if isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    return None


def _targets(ds, reader: Reader, what: str) -> list[int]:
    """Every item's label: from ``targets`` (through ``Subset``s), a label column, else read item by item."""
    indices = list(range(len(ds)))
    for layer in _layers(ds):
        values = getattr(layer, "targets", None)
        if values is None and reader.label in (getattr(layer, "column_names", None) or ()):
            values = layer[reader.label]
        if values is not None and len(values) >= max(indices, default=-1) + 1:
            values = values.tolist() if hasattr(values, "tolist") else list(values)
            return [_label(values[i], f"{what} item {n}") for n, i in enumerate(indices)]
        inner = getattr(layer, "indices", None)
        if inner is None or getattr(layer, "dataset", None) is None:
            break
        indices = [int(inner[i]) for i in indices]
    return [_label(reader(ds[i])[1], f"{what} item {i}") for i in range(len(ds))]


def item_bytes(image) -> bytes:
    """The bytes of an image or tensor, with its shape and kind (for fingerprints)."""
    if isinstance(image, Image.Image):
        return f"{image.mode}{image.size}".encode() + image.tobytes()
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu().contiguous()
        return f"{t.dtype}{tuple(t.shape)}".encode() + t.flatten().view(torch.uint8).numpy().tobytes()
    array = np.ascontiguousarray(image)
    return f"{array.dtype}{array.shape}".encode() + array.tobytes()


@contextmanager
def seeded(seed: int = 0):
    """Random transforms inside give the same items every time (torch, numpy and ``random``, restored)."""
    state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)
            np.random.set_state(np_state)


class ObjectSplit(torch.utils.data.Dataset):
    """One split of data given as Python objects: ``(image, label)`` with the run's transform applied to
    images, tensors taken as they are (of the model's ``input_size``, when it is given)."""

    def __init__(self, base, reader, targets, num_classes, source, transform=None, input_size=None):
        self.base, self.reader, self.targets = base, reader, targets
        self.num_classes, self.source, self.transform = num_classes, source, transform
        self.input_size = tuple(input_size) if input_size is not None else None
        with seeded():  # the first item's kind and shape are checked now, not in the first batch
            self[0]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image, label = self.reader(self.base[index])
        label = _label(label, f"{self.source} item {index}")
        if not 0 <= label < self.num_classes:
            raise DataError(f"{self.source} item {index}: label {label} out of range [0, {self.num_classes})")
        if isinstance(image, torch.Tensor):
            if self.input_size is not None and tuple(image.shape) != self.input_size:
                raise DataError(
                    f"{self.source} item {index}: a tensor of shape {tuple(image.shape)}, but the model takes "
                    f"{self.input_size}; give PIL images (vprompt then applies the backbone's transforms) "
                    "or tensors of that shape"
                )
            return image, label
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise DataError(
                f"{self.source} item {index}: the image is {type(image).__name__}; expected a "
                "PIL image, a uint8 array or a tensor"
            )
        image = to_rgb(image)
        return (self.transform(image) if self.transform is not None else image), label

    def digest(self, indices: list[int]) -> str:
        """SHA-256 of the labels at ``indices`` and the bytes of :data:`SAMPLE` evenly spaced items."""
        digest = hashlib.sha256(np.asarray([self.targets[i] for i in indices], dtype=np.int64).tobytes())
        picks = (
            {indices[round(k * (len(indices) - 1) / (SAMPLE - 1))] for k in range(SAMPLE)} if indices else ()
        )
        with seeded():
            for i in sorted(picks):
                digest.update(item_bytes(self.reader(self.base[i])[0]))
        return digest.hexdigest()


class ObjectSource(Source):
    """Data given as Python objects (see the module's text); ``info.spec`` is ``python:<type>#<hash>``."""

    def __init__(self, data):
        parts = _splits(data)
        first = next(iter(parts.values()))
        self.reader = _reader(first, f"data ({type(first).__name__})")
        named = {k: n for k, ds in parts.items() if (n := _class_names(ds, self.reader.label)) is not None}
        names = list(named.values())
        if len(set(names)) > 1:
            listed = "; ".join(f"{k}: {', '.join(n)}" for k, n in named.items())
            raise DataError(f"data: the splits name different classes ({listed})")
        self.targets = {k: _targets(ds, self.reader, f"{k} data") for k, ds in parts.items()}
        found = max(1, *(max(t) + 1 for t in self.targets.values()))
        self.num_classes = num_classes = len(names[0]) if names else found
        for split, labels in self.targets.items():
            bad = next((i for i, t in enumerate(labels) if not 0 <= t < num_classes), None)
            if bad is not None:
                raise DataError(
                    f"{split} data item {bad}: label {labels[bad]} out of range [0, {num_classes})"
                    + (f" ({num_classes} class names)" if names else "")
                )
        self.parts = parts
        class_names = names[0] if names else generic_names(num_classes)
        digest = hashlib.sha256(json.dumps(class_names).encode())
        for split, ds in sorted(parts.items()):
            digest.update(f"{split}:{self._dataset(split, None).digest(list(range(len(ds))))}".encode())
        kinds = "+".join(dict.fromkeys(type(ds).__name__ for ds in parts.values()))
        described = ", ".join(f"{k} {type(v).__name__} ({len(v)} items)" for k, v in parts.items())
        if "train" in parts and "val" in parts and "trainval" not in parts:
            parts["trainval"] = torch.utils.data.ConcatDataset([parts["train"], parts["val"]])
            self.targets["trainval"] = self.targets["train"] + self.targets["val"]
        native = tuple(s for s in ("train", "val", "trainval", "test") if s in parts)
        self.held_out = "train" in parts and "val" not in parts
        self.info = DatasetInfo(
            f"python:{kinds}#{digest.hexdigest()[:16]}",
            "python",
            f"Python objects: {described}",
            num_classes,
            class_names,
            with_held_out(native) if self.held_out else native,
            own_transforms=isinstance(self.reader(first[0])[0], torch.Tensor),
        )

    def _dataset(self, split: str, transform):
        return ObjectSplit(
            self.parts[split],
            self.reader,
            self.targets[split],
            self.num_classes,
            f"{split} data",
            transform,
            self.input_size if transform is not None else None,
        )
