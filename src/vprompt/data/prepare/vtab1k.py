"""The official VTAB-1k definitions of the 19 tasks, as data: TFDS dataset and version, which slices of
which TFDS splits form ``train800`` / ``val200`` / ``test``, and how each task's label is read or derived.

Taken from google-research/task_adaptation (Apache-2.0); nothing here imports TensorFlow.
Design notes: ``docs/design.md``, section ``vprompt/data/prepare/vtab1k.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..sources.vtab1k import VTAB_TASKS

#: a slice of a TFDS split: ``(split, start, stop)`` = ``split[start:stop]``
Slice = tuple[str, int, int]
TRAIN800, VAL200 = 800, 200


@dataclass(frozen=True)
class Splits:
    """How a task's official parts are cut from the TFDS splits.

    ``val``: the TFDS split the validation part is, or ``None`` when it is cut from ``train`` at
    ``train_percent`` (``val`` starts at ``train_percent * n_train // 100``). ``test``: the TFDS split that
    is the test part, or ``None`` when it is the rest of ``train`` after ``train_percent + val_percent``
    (each ``n * p // 100``). ``test_from_percent``: the test part starts at this percentage of the ``test``
    split (smallNORB: val is ``test[:50%]``, test ``test[50%:]``; its val200 is ``test[:200]``).
    """

    val: str | None = "validation"
    test: str | None = "test"
    train_percent: int | None = None
    val_percent: int | None = None
    test_from_percent: int | None = None
    val_from_test: bool = False


NATIVE = Splits()  # TFDS has train, validation and test


def label_feature(example: dict) -> int:
    """The example's own ``label`` feature."""
    return int(example["label"])


def clevr_count(example: dict) -> int:
    """``clevr(task="count_all")``: the number of objects minus 3 (scenes hold 3..10 objects → 0..7)."""
    return int(np.size(example["objects"]["size"])) - 3


def bin_index(value: float, thresholds) -> int:
    """The largest ``i`` with ``thresholds[i] < value`` (task_adaptation's ``reduce_max(where(thrs - v < 0))``)."""
    below = np.flatnonzero(np.asarray(thresholds, dtype=np.float64) < value)
    if below.size == 0:
        raise ValueError(f"value {value} lies below the first bin edge {thresholds[0]}")
    return int(below.max())


CLEVR_DISTANCE_EDGES = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_DISTANCE_EDGES = (-100.0, 8.0, 20.0, 999.0)
KITTI_NO_VEHICLE_DEPTH = 1000.0  # appended before the min: an image without vehicles is the farthest bin


def clevr_distance(example: dict) -> int:
    """``clevr(task="closest_object_distance")``: the smallest ``pixel_coords[:, 2]`` (depth), binned at
    0, 8, 8.5, 9, 9.5, 10, 100 → 0..5."""
    depth = float(np.min(np.asarray(example["objects"]["pixel_coords"])[:, 2]))
    return bin_index(depth, CLEVR_DISTANCE_EDGES)


def kitti_vehicle_distance(example: dict) -> int:
    """``kitti(task="closest_vehicle_distance")``: the depth ``location[:, 2]`` of the closest vehicle (type
    < 3: Car, Van, Truck; 1000 when there is none), binned at -100, 8, 20, 999 → 0..3."""
    objects = example["objects"]
    vehicles = np.asarray(objects["type"]) < 3
    depths = np.asarray(objects["location"], dtype=np.float64).reshape(-1, 3)[vehicles, 2]
    depth = float(np.min(np.append(depths, KITTI_NO_VEHICLE_DEPTH)))
    return bin_index(depth, KITTI_DISTANCE_EDGES)


def dsprites_binned(attribute: str, original: int, classes: int = 16) -> Callable[[dict], int]:
    """``dsprites(predicted_attribute=..., num_classes=16)``: ``floor(value / (original / classes))``."""
    factor = original / classes

    def label(example: dict) -> int:
        return int(np.floor(float(example[attribute]) / factor))

    label.__name__ = f"dsprites_{attribute}"
    return label


def attribute(name: str) -> Callable[[dict], int]:
    def label(example: dict) -> int:
        return int(example[name])

    label.__name__ = name
    return label


def rgb_image(example: dict, scale: int = 1) -> np.ndarray:
    """The example's image as ``uint8`` ``H×W×3``: one channel is tiled (dSprites, smallNORB) and scaled
    (dSprites stores 0/1 pixels; task_adaptation multiplies by 255)."""
    image = np.asarray(example["image"])
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if scale != 1:
        image = image.astype(np.int64) * scale
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class VtabTask:
    """One VTAB-1k task: the folder vprompt reads, its TFDS source and how its splits and label are made."""

    name: str
    tfds: str  # TFDS name[/config]:version, as task_adaptation asks for it
    source: str  # file in google-research/task_adaptation
    args: str  # the task's arguments in scripts/run_all_tasks.sh
    splits: Splits
    label: Callable[[dict], int] = label_feature
    pixel_scale: int = 1
    manual: bool = False  # TFDS cannot download it: the files must be put in its manual folder

    @property
    def num_classes(self) -> int:
        return VTAB_TASKS[self.name]

    @property
    def tfds_name(self) -> str:
        return self.tfds.split(":")[0]

    def image(self, example: dict) -> np.ndarray:
        return rgb_image(example, self.pixel_scale)

    def slices(self, counts: dict[str, int]) -> dict[str, list[Slice]]:
        """``train800`` / ``val200`` / ``train800val200`` / ``test`` as slices of the TFDS splits, given the
        TFDS split sizes ``counts`` (``{"train": n, "validation": n, "test": n}``)."""
        s = self.splits
        need = {"train"} | ({s.val} if s.val else set()) | ({s.test} if s.test else set())
        missing = sorted(need - set(counts))
        if missing:
            raise ValueError(f"{self.name}: TFDS {self.tfds_name} has no split {', '.join(missing)}")
        n_train = counts["train"]
        if s.val_from_test:  # smallNORB
            val = ("test", 0, VAL200)
            start = s.test_from_percent * counts["test"] // 100
            test = ("test", start, counts["test"])
        elif s.val is not None:
            val, test = (s.val, 0, VAL200), (s.test, 0, counts[s.test])
        else:
            train_end = s.train_percent * n_train // 100
            val = ("train", train_end, train_end + VAL200)
            if s.test is not None:
                test = (s.test, 0, counts[s.test])
            else:  # train-only datasets: the test part is what follows train and val
                test = ("train", train_end + s.val_percent * n_train // 100, n_train)
        train = ("train", 0, TRAIN800)
        result = {"train800": [train], "val200": [val], "train800val200": [train, val], "test": [test]}
        for name, parts in result.items():
            for split, start, stop in parts:
                if not 0 <= start < stop <= counts[split]:
                    raise ValueError(
                        f"{self.name}: {name} needs {split}[{start}:{stop}] but TFDS {self.tfds_name} "
                        f"has {counts[split]} examples in {split}"
                    )
        return result


def _from_train(percent: int, test: str | None = "test", val_percent: int | None = None) -> Splits:
    return Splits(val=None, test=test, train_percent=percent, val_percent=val_percent)


#: The 19 tasks, in the order of the VTAB paper (natural, specialized, structured).
VTAB1K: dict[str, VtabTask] = {
    t.name: t
    for t in [
        VtabTask("caltech101", "caltech101:3.*.*", "caltech.py", "caltech101", _from_train(90)),
        VtabTask("cifar", "cifar100:3.*.*", "cifar.py", "cifar(num_classes=100)", _from_train(90)),
        VtabTask("dtd", "dtd:3.*.*", "dtd.py", "dtd", NATIVE),
        VtabTask("oxford_flowers102", "oxford_flowers102:2.*.*", "oxford_flowers102.py", "", NATIVE),
        VtabTask("oxford_iiit_pet", "oxford_iiit_pet:3.*.*", "oxford_iiit_pet.py", "", _from_train(80)),
        VtabTask("svhn", "svhn_cropped:3.*.*", "svhn.py", "svhn", _from_train(90)),
        VtabTask("sun397", "sun397/tfds:4.*.*", "sun397.py", "sun397 (config tfds)", NATIVE),
        VtabTask("patch_camelyon", "patch_camelyon:2.*.*", "patch_camelyon.py", "", NATIVE),
        VtabTask(
            "eurosat", "eurosat/rgb:2.*.*", "eurosat.py", "eurosat (subset rgb)", _from_train(60, None, 20)
        ),
        VtabTask("resisc45", "resisc45:3.*.*", "resisc45.py", "", _from_train(60, None, 20), manual=True),
        VtabTask(
            "diabetic_retinopathy",
            "diabetic_retinopathy_detection/btgraham-300:3.*.*",
            "diabetic_retinopathy.py",
            'diabetic_retinopathy(config="btgraham-300")',
            NATIVE,
            manual=True,
        ),
        VtabTask(
            "clevr_count",
            "clevr:3.*.*",
            "clevr.py",
            'clevr(task="count_all")',
            _from_train(90, "validation"),
            clevr_count,
        ),
        VtabTask(
            "clevr_dist",
            "clevr:3.*.*",
            "clevr.py",
            'clevr(task="closest_object_distance")',
            _from_train(90, "validation"),
            clevr_distance,
        ),
        VtabTask("dmlab", "dmlab:2.0.1", "dmlab.py", "dmlab", NATIVE),
        VtabTask(
            "kitti",
            "kitti:3.1.0",
            "kitti.py",
            'kitti(task="closest_vehicle_distance")',
            NATIVE,
            kitti_vehicle_distance,
        ),
        VtabTask(
            "dsprites_loc",
            "dsprites:2.*.*",
            "dsprites.py",
            'dsprites(predicted_attribute="label_x_position",num_classes=16)',
            _from_train(80, None, 10),
            dsprites_binned("label_x_position", 32),
            pixel_scale=255,
        ),
        VtabTask(
            "dsprites_ori",
            "dsprites:2.*.*",
            "dsprites.py",
            'dsprites(predicted_attribute="label_orientation",num_classes=16)',
            _from_train(80, None, 10),
            dsprites_binned("label_orientation", 40),
            pixel_scale=255,
        ),
        VtabTask(
            "smallnorb_azi",
            "smallnorb:2.*.*",
            "smallnorb.py",
            'smallnorb(predicted_attribute="label_azimuth")',
            Splits(val=None, test="test", test_from_percent=50, val_from_test=True),
            attribute("label_azimuth"),
        ),
        VtabTask(
            "smallnorb_ele",
            "smallnorb:2.*.*",
            "smallnorb.py",
            'smallnorb(predicted_attribute="label_elevation")',
            Splits(val=None, test="test", test_from_percent=50, val_from_test=True),
            attribute("label_elevation"),
        ),
    ]
}
