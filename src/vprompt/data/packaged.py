"""Real data that ships inside installed packages (no internet needed)."""

from __future__ import annotations

import re
from pathlib import Path

from ..packaged import package_file

FOOLBOX_PIP = "foolbox==3.3.4"


def foolbox_imagenet() -> list[tuple[Path, int]]:
    """The 20 real ImageNet validation photos shipped with foolbox, with their ImageNet-1k labels."""
    data = package_file("foolbox", "data", FOOLBOX_PIP)
    images = []
    for path in data.glob("imagenet_*"):
        match = re.fullmatch(r"imagenet_(\d+)_(\d+)\.(?:jpg|png)", path.name)
        if match:
            images.append((int(match.group(1)), path, int(match.group(2))))
    if len(images) != 20:
        raise FileNotFoundError(f"expected 20 foolbox ImageNet images in {data}, found {len(images)}")
    return [(path, label) for _, path, label in sorted(images)]
