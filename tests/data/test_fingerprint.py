"""A split's fingerprint: file list + sizes + labels (or the pixels), so a changed dataset shows."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fakes import CONFIG, write_image
from vprompt.data import load
from vprompt.data.datasets import ArrayDataset, ImageListDataset, Sample, take
from vprompt.data.fingerprint import fingerprint


def files(tmp_path, sizes):
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        paths.append(path)
    return paths


def test_image_files_are_fingerprinted_by_list_sizes_and_labels(tmp_path):
    paths = files(tmp_path / "a", [10, 20, 30, 40])
    data = ImageListDataset([Sample(p, i % 2) for i, p in enumerate(paths)], 2, "test")
    print_ = fingerprint(data)
    assert (print_["items"], print_["files"], print_["bytes"]) == (4, 4, 100)
    # the same files elsewhere: the same fingerprint (paths are relative to their common folder)
    moved = files(tmp_path / "b", [10, 20, 30, 40])
    assert fingerprint(ImageListDataset([Sample(p, i % 2) for i, p in enumerate(moved)], 2, "t")) == print_
    paths[2].write_bytes(b"x" * 31)  # one file changed
    assert fingerprint(data)["sha256"] != print_["sha256"] and fingerprint(data)["bytes"] == 101
    relabelled = ImageListDataset([Sample(p, 1 - i % 2) for i, p in enumerate(moved)], 2, "t")
    assert fingerprint(relabelled)["sha256"] != print_["sha256"]
    sub = fingerprint(take(data, [0, 3]))
    assert (sub["items"], sub["files"], sub["bytes"]) == (2, 2, 50)


def test_arrays_are_fingerprinted_by_their_pixels():
    images = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    labels = np.array([0, 1, 0, 1])
    one = fingerprint(ArrayDataset(images, labels, 2, "a"))
    assert one["items"] == 4 and "files" not in one
    assert fingerprint(ArrayDataset(images.copy(), labels, 2, "b")) == one
    changed = images.copy()
    changed[1, 0, 0] += 1
    assert fingerprint(ArrayDataset(changed, labels, 2, "a"))["sha256"] != one["sha256"]
    assert fingerprint(take(ArrayDataset(images, labels, 2, "a"), [1]))["sha256"] != one["sha256"]


def test_file_names_that_are_not_utf8_load_and_fingerprint_stably(tmp_path):
    """``b'\\xff.png'`` (surrogate-escaped in Python) used to fail the fingerprint with a UTF-8 error."""

    def folder(name: str, tail: bytes):
        for c in ("a", "b"):
            path = tmp_path / name / "train" / c / os.fsdecode(c.encode() + tail + b".png")
            try:
                write_image(path, seed=ord(c))
            except OSError:  # a file system that stores names as UTF-8 only (macOS)
                pytest.skip("this file system does not accept file names that are not UTF-8")
        return f"folder:{tmp_path / name}"

    spec = folder("x", b"\xff")
    data = load(spec, None, "trainval", CONFIG)
    assert len(os.fsencode(data.samples[0].path.name)) == 6  # b"a\xff.png", read back as it is on disk
    x, label = data[0]
    assert tuple(x.shape) == (3, 32, 32) and label == 0
    one = fingerprint(data)
    assert (one["items"], one["files"]) == (2, 2)
    assert fingerprint(load(spec, None, "trainval", CONFIG)) == one  # stable
    assert fingerprint(load(folder("y", b"\xff"), None, "trainval", CONFIG)) == one  # moved: the same
    assert fingerprint(load(folder("z", b"\xfe"), None, "trainval", CONFIG))["sha256"] != one["sha256"]
