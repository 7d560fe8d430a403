"""A stand-in for TfdsReader: small TFDS-like splits of numpy examples whose image says where each
example came from (split, index), so the tests can see which slices were written where."""

from __future__ import annotations

import numpy as np

SPLIT_COLOUR = {"train": 40, "validation": 120, "test": 200}


def example(task, split: str, index: int) -> dict:
    # three flat grey 8x8 blocks (JPEG keeps those to +-1): the split, then the index in base 64, times 4
    image = np.zeros((8, 24, 3), np.uint8)
    for block, value in enumerate((SPLIT_COLOUR[split], 4 * (index // 64), 4 * (index % 64))):
        image[:, 8 * block : 8 * block + 8] = value
    ex = {"image": image, "label": np.int64(index % task.num_classes)}
    if task.name.startswith("clevr"):
        n = 3 + index % 8
        coords = np.full((n, 3), 50.0, np.float32)
        coords[index % n, 2] = 7.0 + 0.5 * (index % 6)  # the closest object's depth: 7.0 ... 9.5
        ex["objects"] = {"size": np.zeros(n, np.int64), "pixel_coords": coords}
    if task.name.startswith("smallnorb"):
        ex["image"] = image[..., :1]
        ex["label_azimuth"], ex["label_elevation"] = np.int64(index % 18), np.int64(index % 9)
    return ex


class FakeReader:
    """``counts`` TFDS split sizes; ``fail_after``: raise ``error`` once that many examples were read;
    ``prepared=False``: not in the TFDS folder yet (``prepare`` would download)."""

    def __init__(
        self, task, counts, manual=False, fail_after=None, error=RuntimeError, log=None, prepared=True
    ):
        self.task, self._counts, self.manual, self.prepared = task, dict(counts), manual, prepared
        self.fail_after, self.error, self.read = fail_after, error, 0
        self.version, self.note, self.manual_dir = "9.9.9", "", "/fake/tfds/downloads/manual"
        self.manual_instructions = "Download the files from the challenge page."
        self.log = log if log is not None else []

    def needs_manual_download(self) -> bool:
        return self.manual

    def needs_download(self) -> bool:
        return not self.prepared

    def prepare(self) -> None:
        self.log.append(("prepare", self.task.name))

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def examples(self, split, start, stop):
        self.log.append(("read", self.task.name, split, start, stop))
        for i in range(start, stop):
            if self.fail_after is not None and self.read >= self.fail_after:
                raise self.error("simulated failure")
            self.read += 1
            yield example(self.task, split, i)
