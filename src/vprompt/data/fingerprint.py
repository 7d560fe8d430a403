"""A dataset's fingerprint: which items it holds, to tell later whether the data under a run changed.

For image files: the file list (paths relative to the files' common folder, as the bytes the file
system holds, so names that are not valid UTF-8 work too), each file's size and label, hashed together;
for in-memory arrays: the pixels and labels, hashed; for data given as Python objects: the labels and
a sample of the items' bytes. Runs record it per split.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from .datasets import ArrayDataset, ImageListDataset, IndexedDataset
from .sources.objects import ObjectSplit


def base_and_indices(dataset) -> tuple[Any, list[int]]:
    """The underlying dataset and the indices (into it) that ``dataset`` holds."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, IndexedDataset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.base
    return dataset, indices


def fingerprint(dataset) -> dict[str, Any]:
    """``{"items", "files", "bytes", "sha256"}`` of ``dataset`` (``files``/``bytes`` for image files only)."""
    base, indices = base_and_indices(dataset)
    digest = hashlib.sha256()
    result: dict[str, Any] = {"items": len(indices)}
    if isinstance(base, ImageListDataset):
        samples = [base.samples[i] for i in indices]
        paths = [str(s.path) for s in samples]
        common = os.path.commonpath(paths) if paths else ""
        total = 0
        for path, sample in zip(paths, samples, strict=True):
            size = os.stat(path).st_size if os.path.exists(path) else -1
            total += max(size, 0)
            name = os.path.relpath(path, common) if common else path
            digest.update(os.fsencode(f"{name}\t{size}\t{sample.label}\n"))  # names need not be UTF-8
        result |= {"files": len(set(paths)), "bytes": total}
    elif isinstance(base, ArrayDataset):
        chosen = np.asarray(indices, dtype=np.int64)
        digest.update(np.ascontiguousarray(base.images[chosen]).tobytes())
        digest.update(np.ascontiguousarray(base.labels[chosen]).tobytes())
    elif isinstance(base, ObjectSplit):
        digest.update(base.digest(indices).encode())
    else:
        digest.update(f"{type(base).__name__}:{len(indices)}".encode())
    result["sha256"] = digest.hexdigest()
    return result
