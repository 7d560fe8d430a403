"""``fashion-mnist``: the idx files (Debian's ``dataset-fashion-mnist`` package, or a root of your own)."""

from __future__ import annotations

from pathlib import Path

from ..datasets import ArrayDataset, read_idx_gz
from .base import DatasetInfo, Source, register_source, with_held_out

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


class FashionMNISTSource(Source):
    """Fashion-MNIST: idx files read with gzip+numpy.

    With a root, from ``<root>`` or ``<root>/FashionMNIST/raw`` only: a root that does not exist, or that
    holds other files but not these, is an error (never another copy in its place). An existing *empty*
    root is filled by torchvision ``FashionMNIST(root, download=True)`` (online only). Without a root, from
    the Debian package path ``/usr/share/datasets/fashion-mnist``.
    """

    FILES = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, spec: str, root: Path | None):
        self.spec, self.root = spec, Path(root) if root is not None else None
        if self.root is None:
            candidates = [FASHION_MNIST_DEBIAN]
        else:
            candidates = [self.root, self.root / "FashionMNIST" / "raw"]
        self.candidates = candidates
        self.dir = next((d for d in candidates if self._find(d, "train", 0) is not None), None)
        if self.dir is None and self.root is not None:
            if not self.root.is_dir():
                raise FileNotFoundError(self._missing(f"{self.root} is not a folder"))
            if any(self.root.iterdir()):
                raise FileNotFoundError(self._missing(f"{self.root} holds other files"))
        self.held_out = True
        self.info = DatasetInfo(
            spec,
            "fashion-mnist",
            "fashion-mnist",
            10,
            FASHION_MNIST_CLASSES,
            with_held_out(("train", "test")),
            self.dir,
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
        files = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
        if self.root is None:
            fix = "apt-get install dataset-fashion-mnist, or name a root that holds them"
        else:
            fix = "put them there, point the root at an empty folder to download them (online), or give no root "
            fix += f"to use the Debian package's copy in {FASHION_MNIST_DEBIAN}"
        return f"Fashion-MNIST idx files not found in {places} ({why}): expected {files}; {fix}"


@register_source("fashion-mnist", "fashion_mnist", "fashionmnist", usage="fashion-mnist")
def _fashion_mnist(spec: str, arg: str, root: Path | None) -> Source:
    return FashionMNISTSource(spec, root)
