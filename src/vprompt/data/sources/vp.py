"""``vp:<name>``: the visual-prompting set: CoOp splits where the papers use them, torchvision otherwise."""

from __future__ import annotations

from pathlib import Path

from .base import Source, register_source
from .coop import COOP, CoOpSource
from .torchvision import TorchvisionSource

#: VP datasets read with torchvision (``download=False``): name → (class, class count).
VP_TORCHVISION: dict[str, tuple[str, int]] = {
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
    "svhn": ("SVHN", 10),
    "gtsrb": ("GTSRB", 43),
}
_VP_ALIASES = {"flowers": "flowers102", "pets": "oxford_pets", "cars": "stanford_cars", "food": "food101"}


@register_source("vp", usage="vp:<name>")
def _vp(spec: str, arg: str, root: Path | None) -> Source:
    name = _VP_ALIASES.get(arg.lower(), arg.lower())
    if name in COOP:
        return CoOpSource(spec, name, root)
    if name in VP_TORCHVISION:
        cls_name, n = VP_TORCHVISION[name]
        return TorchvisionSource(spec, cls_name, root, n)
    raise ValueError(f"unknown VP dataset {arg!r}; choose one of {', '.join([*VP_TORCHVISION, *COOP])}")
