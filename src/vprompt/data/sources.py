"""Dataset specs (``family:argument`` strings) and where each family's files live on disk.

Split names are logical: ``train``, ``val``, ``trainval``, ``test`` (plus ``all`` for a class folder without
split lists). VTAB-1k also accepts its file names ``train800``, ``val200``, ``train800val200``.
See the README's Data section for the exact folder layouts.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import (
    ArrayDataset,
    DataError,
    ImageListDataset,
    Sample,
    SyntheticDataset,
    TransformedDataset,
    read_idx_gz,
    take,
)

# --------------------------------------------------------------------------------------------- VTAB-1k
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

# ------------------------------------------------------------------------------------------------ FGVC


@dataclass(frozen=True)
class _FGVC:
    folder: str  # <root>/<folder>/ holds train.json, val.json, test.json
    images: str  # json image paths are relative to <root>/<folder>/<images>/
    num_classes: int
    title: str


#: VPT's FGVC layout: folder names and the image directory the json paths are relative to.
FGVC: dict[str, _FGVC] = {
    "cub": _FGVC("CUB_200_2011", "images", 200, "CUB-200-2011"),
    "nabirds": _FGVC("nabirds", "images", 555, "NABirds"),
    "flowers": _FGVC("OxfordFlower", "", 102, "Oxford Flowers 102"),
    "dogs": _FGVC("Stanford-dogs", "Images", 120, "Stanford Dogs"),
    "cars": _FGVC("Stanford-cars", "", 196, "Stanford Cars"),
}

# ---------------------------------------------------------------------------------------------- VP set


@dataclass(frozen=True)
class _CoOp:
    folder: str  # <root>/<folder>/ holds the split file
    images: str  # relpaths in the split file are relative to <root>/<folder>/<images>/
    split_file: str
    num_classes: int


#: CoOp (Zhou et al.) layouts for the VP datasets that use ``split_zhou_*.json``.
COOP: dict[str, _CoOp] = {
    "flowers102": _CoOp("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", 102),
    "dtd": _CoOp("dtd", "images", "split_zhou_DescribableTextures.json", 47),
    "ucf101": _CoOp("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", 101),
    "food101": _CoOp("food-101", "images", "split_zhou_Food101.json", 101),
    "eurosat": _CoOp("eurosat", "2750", "split_zhou_EuroSAT.json", 10),
    "oxford_pets": _CoOp("oxford_pets", "images", "split_zhou_OxfordPets.json", 37),
    "stanford_cars": _CoOp("stanford_cars", "", "split_zhou_StanfordCars.json", 196),
    "sun397": _CoOp("sun397", "SUN397", "split_zhou_SUN397.json", 397),
}
#: VP datasets read with torchvision (``download=False``): name → (class, class count).
VP_TORCHVISION: dict[str, tuple[str, int]] = {
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
    "svhn": ("SVHN", 10),
    "gtsrb": ("GTSRB", 43),
}
#: torchvision datasets whose images have one small size: class → side in pixels. GTSRB's photos vary
#: (about 15–250 px); ILM-VP and the other VP papers resize them to 32 and treat GTSRB as a 32-px dataset.
SMALL_IMAGE_SIZES: dict[str, int] = {"CIFAR10": 32, "CIFAR100": 32, "SVHN": 32, "GTSRB": 32, "MNIST": 28}
_VP_ALIASES = {"flowers": "flowers102", "pets": "oxford_pets", "cars": "stanford_cars", "food": "food101"}

# ------------------------------------------------------------------------------------------ others
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Datasets that ship only train and test get a validation split: this fraction of the training set,
#: drawn once with a fixed seed; ``train`` is the rest and ``trainval`` the whole training set.
HELD_OUT_FRACTION = 0.1
HELD_OUT_SEED = 0
#: Items per class in each split of ``synthetic:<classes>x<size>``.
SYNTHETIC_PER_CLASS = {"train": 16, "val": 4, "test": 8}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its spec, class count and names, splits, root, and the split sizes it must have.

    ``class_names`` are ``class_<i>`` where the names are not known (most VTAB tasks).
    ``expected_sizes`` maps split → required item count (VTAB-1k: 800/200/1000); empty when free.
    ``image_size``: the side of the images when the dataset's images are small and of one size (CIFAR,
    SVHN, GTSRB as the VP papers use it, Fashion-MNIST, synthetic), else ``None``.
    """

    spec: str
    family: str
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    root: Path | None = None
    expected_sizes: dict[str, int] = field(default_factory=dict)
    image_size: int | None = None


def _generic_names(n: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(n))


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def held_out_indices(n: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` indices of a training set of ``n`` items: a fixed random 10% is held out for val."""
    order = np.random.default_rng(HELD_OUT_SEED).permutation(n)
    n_val = max(1, round(n * HELD_OUT_FRACTION)) if n > 1 else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def with_held_out(splits: tuple[str, ...]) -> tuple[str, ...]:
    """Native splits plus a derived ``val`` / ``trainval`` where the data has ``train`` but no ``val``."""
    if "train" in splits and "val" not in splits:
        return ("train", "val", "trainval", *(s for s in splits if s != "train"))
    return splits


class Source:
    """A resolved spec: ``info`` plus ``dataset(split, transform)``; subclasses implement ``_dataset``.

    A source whose data has only train (and test) lists its splits through :func:`with_held_out` and sets
    ``held_out = True``: ``val`` is then a fixed 10% of the native training set, ``train`` the rest and
    ``trainval`` all of it.
    """

    info: DatasetInfo
    held_out: bool = False

    def dataset(self, split: str, transform: Callable | None = None):
        split = self.canonical_split(split)
        if self.held_out and split in ("train", "val", "trainval"):
            full = self._dataset("train", transform)
            if split == "trainval":
                return full
            train, val = held_out_indices(len(full))
            return take(full, train if split == "train" else val)
        return self._dataset(split, transform)

    def canonical_split(self, split: str) -> str:
        if split not in self.info.splits:
            raise ValueError(
                f"{self.info.spec} has no split {split!r} (splits: {', '.join(self.info.splits)})"
            )
        return split

    def _dataset(self, split: str, transform):  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------


class VTABSource(Source):
    def __init__(self, spec: str, task: str, root: Path | None):
        if task not in VTAB_TASKS:
            raise ValueError(f"unknown VTAB-1k task {task!r}; tasks: {', '.join(VTAB_TASKS)}")
        if root is None:
            raise ValueError(f"{spec} needs a data root (the folder that holds <task>/train800.txt ...)")
        self.dir = _need_dir(Path(root) / task, f"VTAB-1k task folder for {spec}")
        n = VTAB_TASKS[task]
        names = tuple(_VTAB_CLASS_NAMES.get(task, _generic_names(n)))
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
        for number, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{list_file}:{number}: expected '<image path> <label>', got {line!r}")
            samples.append(Sample(self.dir / parts[0], int(parts[1]), f"{list_file}:{number}"))
        return ImageListDataset(samples, self.info.num_classes, str(list_file), transform)


class FGVCSource(Source):
    """VPT's json splits. Labels are mapped to ``0..N-1`` by rank among the distinct ids of all json files."""

    def __init__(self, spec: str, name: str, root: Path | None):
        if name not in FGVC:
            raise ValueError(f"unknown FGVC dataset {name!r}; choose one of {', '.join(FGVC)}")
        if root is None:
            raise ValueError(f"{spec} needs a data root (the folder that holds {FGVC[name].folder}/)")
        meta = FGVC[name]
        root = Path(root)
        # <root>/<folder>/train.json, or root already pointing at the dataset folder
        self.dir = root if (root / "train.json").is_file() else root / meta.folder
        _need_dir(self.dir, f"{meta.title} folder for {spec} (expected {root / meta.folder})")
        self.image_dir = self.dir / meta.images if meta.images else self.dir
        self.annotations: dict[str, list[tuple[str, int]]] = {}
        for split in ("train", "val", "test"):
            path = self.dir / f"{split}.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: split file is missing")
            try:
                data = json.loads(path.read_text())
                self.annotations[split] = [(str(k), int(v)) for k, v in data.items()]
            except (ValueError, AttributeError, TypeError) as e:
                raise DataError(f"{path}: expected a json object {{image path: integer label}} ({e})") from e
        ids = sorted({label for items in self.annotations.values() for _, label in items})
        if len(ids) != meta.num_classes:
            raise DataError(
                f"{self.dir}: {len(ids)} distinct labels in train/val/test.json, "
                f"but {meta.title} has {meta.num_classes} classes"
            )
        self.label_map = {v: i for i, v in enumerate(ids)}
        names = ["" for _ in ids]
        for items in self.annotations.values():
            for rel, label in items:
                i = self.label_map[label]
                if not names[i]:
                    parent = Path(rel).parent.name
                    names[i] = parent or f"class_{i}"
        if len(set(names)) != len(names):  # images not in one folder per class (e.g. Flowers' jpg/)
            names = list(_generic_names(meta.num_classes))
        self.info = DatasetInfo(
            spec, "fgvc", name, meta.num_classes, tuple(names), ("train", "val", "trainval", "test"), root
        )

    def _dataset(self, split, transform):
        parts = ("train", "val") if split == "trainval" else (split,)
        samples = [
            Sample(self.image_dir / rel, self.label_map[label], str(self.dir / f"{p}.json"))
            for p in parts
            for rel, label in self.annotations[p]
        ]
        return ImageListDataset(samples, self.info.num_classes, str(self.dir / f"{split}.json"), transform)


class CoOpSource(Source):
    """CoOp ``split_zhou_*.json``: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``."""

    def __init__(self, spec: str, name: str, root: Path | None):
        meta = COOP[name]
        if root is None:
            raise ValueError(f"{spec} needs a data root (the folder that holds {meta.folder}/)")
        root = Path(root)
        self.dir = root if (root / meta.split_file).is_file() else root / meta.folder
        split_path = self.dir / meta.split_file
        _need_dir(self.dir, f"dataset folder for {spec} (expected {root / meta.folder})")
        if not split_path.is_file():
            raise FileNotFoundError(f"{split_path}: split file is missing")
        self.split_path = split_path
        self.image_dir = self.dir / meta.images if meta.images else self.dir
        try:
            data = json.loads(split_path.read_text())
            self.items = {
                s: [(str(r[0]), int(r[1]), str(r[2])) for r in data[s]] for s in ("train", "val", "test")
            }
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise DataError(
                f"{split_path}: expected {{'train'|'val'|'test': [[relpath, label, classname], ...]}} ({e})"
            ) from e
        names = [f"class_{i}" for i in range(meta.num_classes)]
        for items in self.items.values():
            for _, label, cname in items:
                if 0 <= label < meta.num_classes:
                    names[label] = cname
        self.info = DatasetInfo(
            spec, "vp", name, meta.num_classes, tuple(names), ("train", "val", "trainval", "test"), root
        )

    def _dataset(self, split, transform):
        parts = ("train", "val") if split == "trainval" else (split,)
        samples = [
            Sample(self.image_dir / rel, label, f"{self.split_path} [{p}][{i}]")
            for p in parts
            for i, (rel, label, _) in enumerate(self.items[p])
        ]
        return ImageListDataset(samples, self.info.num_classes, str(self.split_path), transform)


class TorchvisionSource(Source):
    """A ``torchvision.datasets`` class, always constructed with ``download=False``."""

    def __init__(self, spec: str, cls_name: str, root: Path | None, num_classes: int | None = None):
        import torchvision.datasets as tvd

        self.cls = getattr(tvd, cls_name, None)
        if self.cls is None or not isinstance(self.cls, type):
            raise ValueError(f"{spec}: torchvision.datasets has no dataset class {cls_name!r}")
        if root is None:
            raise ValueError(
                f"{spec} needs a data root (the root= folder torchvision.datasets.{cls_name} reads)"
            )
        self.root = _need_dir(Path(root), f"data root for {spec}")
        params = inspect.signature(self.cls).parameters
        self.mode = "train" if "train" in params else "split" if "split" in params else None
        if self.mode is None:
            raise ValueError(f"{spec}: {cls_name} takes neither train= nor split=; use folder:<path> instead")
        splits = ("train", "test") if self.mode == "train" else ("train", "val", "test")
        self.held_out = "val" not in splits
        splits = with_held_out(splits)
        self.spec, self._cache = spec, {}
        first = self._base("train")
        classes = getattr(first, "classes", None)
        if num_classes is None:
            if not classes:
                raise ValueError(f"{spec}: {cls_name} does not list its classes; cannot tell the class count")
            num_classes = len(classes)
        names = tuple(str(c) for c in classes) if classes and len(classes) == num_classes else None
        if cls_name == "SVHN":
            names = tuple(str(i) for i in range(10))
        self.info = DatasetInfo(
            spec,
            spec.split(":")[0],
            cls_name,
            num_classes,
            names or _generic_names(num_classes),
            splits,
            self.root,
            image_size=SMALL_IMAGE_SIZES.get(cls_name),
        )

    def _base(self, split: str):
        if split not in self._cache:
            kwargs = {"train": split == "train"} if self.mode == "train" else {"split": split}
            try:
                self._cache[split] = self.cls(str(self.root), download=False, **kwargs)
            except (RuntimeError, FileNotFoundError, OSError) as e:
                raise FileNotFoundError(
                    f"{self.root}: torchvision {self.cls.__name__} ({split}) not found there: {e}"
                ) from e
        return self._cache[split]

    def _dataset(self, split, transform):
        return TransformedDataset(
            self._base(split), self.info.num_classes, f"{self.spec} [{split}]", transform
        )


class FolderSource(Source):
    """``folder:<path>``: one sub-folder per class (sorted names → labels 0..N-1).

    Splits, first match wins: (1) split lists ``<path>/<split>.txt`` with one image path per line, relative
    to ``<path>`` and starting with the class folder (``cat/001.jpg``); (2) split folders
    ``<path>/<split>/<class>/...`` for ``train``/``val``/``test``; (3) otherwise one split ``all``.
    """

    def __init__(self, spec: str, path: str, root: Path | None):
        p = Path(path).expanduser()
        if not p.is_absolute() and root is not None:
            p = Path(root) / p
        self.dir = _need_dir(p, f"image folder for {spec}")
        self.lists = {
            s: self.dir / f"{s}.txt" for s in ("train", "val", "test") if (self.dir / f"{s}.txt").is_file()
        }
        split_dirs = [s for s in ("train", "val", "test") if (self.dir / s).is_dir()]
        if self.lists:
            splits, class_root = tuple(self.lists), self.dir
        elif "train" in split_dirs:
            splits, class_root = tuple(split_dirs), self.dir / "train"
        else:
            splits, class_root = ("all",), self.dir
        self.layout = "lists" if self.lists else "dirs" if splits != ("all",) else "single"
        self.held_out = "train" in splits and "val" not in splits
        splits = with_held_out(splits)
        classes = sorted(d.name for d in class_root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"{class_root}: no class sub-folders found")
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.info = DatasetInfo(spec, "folder", self.dir.name, len(classes), tuple(classes), splits, self.dir)

    def _scan(self, base: Path) -> list[Sample]:
        samples = []
        for cls in sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if cls not in self.class_index:
                raise DataError(f"{base / cls}: class folder not present in the training split")
            for f in sorted((base / cls).rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    samples.append(Sample(f, self.class_index[cls], str(base / cls)))
        return samples

    def _dataset(self, split, transform):
        if self.layout == "lists":
            list_file = self.lists[split]
            samples = []
            for number, line in enumerate(list_file.read_text().splitlines(), 1):
                rel = line.strip()
                if not rel:
                    continue
                cls = Path(rel).parts[0]
                if cls not in self.class_index:
                    raise DataError(f"{list_file}:{number}: {rel!r} is not inside a class folder")
                samples.append(Sample(self.dir / rel, self.class_index[cls], f"{list_file}:{number}"))
            source = str(list_file)
        else:
            base = self.dir if self.layout == "single" else self.dir / split
            samples, source = self._scan(base), str(base)
        return ImageListDataset(samples, self.info.num_classes, source, transform)


class FashionMNISTSource(Source):
    """Fashion-MNIST: idx files read with gzip+numpy from, in order, ``<root>``, ``<root>/FashionMNIST/raw``,
    the Debian package path, then torchvision ``FashionMNIST(root, download=True)`` (works only online)."""

    FILES = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, spec: str, root: Path | None):
        self.spec, self.root = spec, Path(root) if root is not None else None
        candidates = []
        if self.root is not None:
            candidates += [self.root, self.root / "FashionMNIST" / "raw"]
        candidates.append(FASHION_MNIST_DEBIAN)
        self.dir = next((d for d in candidates if self._find(d, "train", 0) is not None), None)
        self.candidates = candidates
        self.held_out = True
        self.info = DatasetInfo(
            spec,
            "fashion-mnist",
            "fashion-mnist",
            10,
            FASHION_MNIST_CLASSES,
            with_held_out(("train", "test")),
            self.dir,
            image_size=28,
        )

    @staticmethod
    def _find(d: Path, split: str, which: int) -> Path | None:
        stem = FashionMNISTSource.FILES[split][which]
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
        return None

    def _dataset(self, split, transform):
        if self.dir is not None:
            image_file, label_file = self._find(self.dir, split, 0), self._find(self.dir, split, 1)
            for f, which in ((image_file, 0), (label_file, 1)):
                if f is None:
                    raise FileNotFoundError(f"{self.dir / self.FILES[split][which]}[.gz]: file is missing")
            images, labels = read_idx_gz(image_file), read_idx_gz(label_file)
            return ArrayDataset(images, labels, 10, str(image_file), transform)
        if self.root is not None:
            import torchvision.datasets as tvd

            try:
                base = tvd.FashionMNIST(str(self.root), train=split == "train", download=True)
            except Exception as e:  # offline: URLError, RuntimeError...
                raise FileNotFoundError(self._missing(f"download failed: {e}")) from e
            return ArrayDataset(base.data.numpy(), base.targets.numpy(), 10, str(self.root), transform)
        raise FileNotFoundError(self._missing("no root given to download into"))

    def _missing(self, why: str) -> str:
        places = ", ".join(str(c) for c in self.candidates)
        return f"Fashion-MNIST idx files not found in {places} ({why}); apt-get install dataset-fashion-mnist"


class SyntheticSource(Source):
    """``synthetic:<classes>x<size>``: deterministic images, 16/4/8 per class in train/val/test."""

    def __init__(self, spec: str, arg: str):
        try:
            classes, size = (int(v) for v in arg.lower().split("x"))
        except ValueError:
            raise ValueError(f"{spec}: expected synthetic:<classes>x<size>, e.g. synthetic:4x32") from None
        if classes < 2 or size < 4:
            raise ValueError(f"{spec}: need at least 2 classes and 4 px")
        self.size = size
        self.info = DatasetInfo(
            spec,
            "synthetic",
            f"synthetic-{classes}x{size}",
            classes,
            _generic_names(classes),
            ("train", "val", "trainval", "test"),
            image_size=size,
        )

    def _dataset(self, split, transform):
        n = self.info.num_classes
        per_class = SYNTHETIC_PER_CLASS
        if split == "trainval":
            # train and val are different seeds; trainval is a distinct seed with their combined size
            length, seed = n * (per_class["train"] + per_class["val"]), 3
        else:
            length, seed = n * per_class[split], {"train": 0, "val": 1, "test": 2}[split]
        return SyntheticDataset(n, self.size, length, seed, transform)


def resolve(spec: str, root: str | os.PathLike | None = None) -> Source:
    """Parse a dataset spec and locate its files under ``root``; raises ValueError/FileNotFoundError."""
    family, _, arg = spec.strip().partition(":")
    family = family.lower()
    root_path = Path(root).expanduser() if root is not None else None
    if family == "vtab1k":
        return VTABSource(spec, arg, root_path)
    if family == "fgvc":
        return FGVCSource(spec, arg.lower(), root_path)
    if family == "vp":
        name = _VP_ALIASES.get(arg.lower(), arg.lower())
        if name in COOP:
            return CoOpSource(spec, name, root_path)
        if name in VP_TORCHVISION:
            cls_name, n = VP_TORCHVISION[name]
            return TorchvisionSource(spec, cls_name, root_path, n)
        raise ValueError(f"unknown VP dataset {arg!r}; choose one of {', '.join([*VP_TORCHVISION, *COOP])}")
    if family == "torchvision":
        return TorchvisionSource(spec, arg, root_path)
    if family == "folder":
        return FolderSource(spec, arg, root_path)
    if family in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return FashionMNISTSource(spec, root_path)
    if family == "synthetic":
        return SyntheticSource(spec, arg)
    raise ValueError(
        f"unknown dataset spec {spec!r}; use vtab1k:<task>, fgvc:<name>, vp:<name>, torchvision:<Class>, "
        "folder:<path>, fashion-mnist or synthetic:<classes>x<size>"
    )


__all__ = ["DatasetInfo", "Source", "resolve", "VTAB_TASKS", "FGVC", "COOP", "VP_TORCHVISION"]
