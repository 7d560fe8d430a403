"""``vtab1k:<task>``: the processed VTAB-1k layout (NOAH's export): ``<root>/<task>/{train800,val200,
train800val200,test}.txt`` with ``images/<split>/<NNNNNN>.png <label>`` lines
(``.jpg`` in folders prepared before vprompt wrote PNG)."""

from __future__ import annotations

from pathlib import Path

from ..datasets import DataError, ImageListDataset, Sample
from ..entries import read_text, text_label
from .base import DatasetInfo, Source, generic_names, need_dir, register_source

#: The 19 VTAB-1k task folders and their class counts.
VTAB_TASKS: dict[str, int] = {
    "caltech101": 102,
    "cifar": 100,
    "dtd": 47,
    "oxford_flowers102": 102,
    "oxford_iiit_pet": 37,
    "svhn": 10,
    "sun397": 397,
    "patch_camelyon": 2,
    "eurosat": 10,
    "resisc45": 45,
    "diabetic_retinopathy": 5,
    "clevr_count": 8,
    "clevr_dist": 6,
    "dmlab": 6,
    "kitti": 4,
    "dsprites_loc": 16,
    "dsprites_ori": 16,
    "smallnorb_azi": 18,
    "smallnorb_ele": 9,
}
VTAB_SPLIT_FILES = {"train": "train800", "val": "val200", "trainval": "train800val200", "test": "test"}
#: Expected VTAB-1k split sizes; the test size differs per task and is only required to be non-zero.
VTAB_SIZES = {"train": 800, "val": 200, "trainval": 1000}
_VTAB_CLASS_NAMES = {
    "svhn": [str(i) for i in range(10)],
    "eurosat": [
        "AnnualCrop",
        "Forest",
        "HerbaceousVegetation",
        "Highway",
        "Industrial",
        "Pasture",
        "PermanentCrop",
        "Residential",
        "River",
        "SeaLake",
    ],
    "patch_camelyon": ["no_tumor", "tumor"],
}


class VTABSource(Source):
    def __init__(self, spec: str, task: str, root: Path | None):
        if task not in VTAB_TASKS:
            raise ValueError(f"unknown VTAB-1k task {task!r}; tasks: {', '.join(VTAB_TASKS)}")
        if root is None:
            raise ValueError(f"{spec} needs a data root (the folder that holds <task>/train800.txt ...)")
        self.dir = need_dir(Path(root) / task, f"VTAB-1k task folder for {spec}")
        n = VTAB_TASKS[task]
        names = tuple(_VTAB_CLASS_NAMES.get(task, generic_names(n)))
        self.info = DatasetInfo(
            spec, "vtab1k", task, n, names, tuple(VTAB_SPLIT_FILES), Path(root), dict(VTAB_SIZES)
        )

    def canonical_split(self, split: str) -> str:
        reverse = {v: k for k, v in VTAB_SPLIT_FILES.items()}
        return super().canonical_split(reverse.get(split, split))

    def _dataset(self, split, transform):
        list_file = self.dir / f"{VTAB_SPLIT_FILES[split]}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"{list_file}: split file is missing")
        samples = []
        for number, line in enumerate(read_text(list_file).splitlines(), 1):
            if not line.strip():
                continue
            where = f"{list_file}:{number}"
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"{where}: expected '<image path> <label>', got {line!r}")
            samples.append(Sample(self.dir / parts[0], text_label(parts[1], where), where))
        return ImageListDataset(samples, self.info.num_classes, str(list_file), transform)


@register_source(
    "vtab1k",
    usage="vtab1k:<task>",
    split_aliases={file: name for name, file in VTAB_SPLIT_FILES.items()},
)
def _vtab1k(spec: str, arg: str, root: Path | None) -> Source:
    return VTABSource(spec, arg, root)
