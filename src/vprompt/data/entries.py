"""What list files say, checked: integer labels, image paths, and paths that stay inside the dataset.

VTAB-1k lists, FGVC json, CoOp json and folder split lists name each image by a path relative to the
dataset folder, most with a label. A label must be an integer as written (``2.9``, ``true``, ``"3"`` and
``²`` are refused, not rounded or coerced); an image path must lie inside the dataset folder once ``..``
is resolved lexically (no symlink is followed, so images that are symlinks into another disk still
work). Every error names the list file and the line or entry.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .datasets import DataError, Sample

#: A label in a text list: optional minus and ASCII digits only (``str.isdigit`` also accepts ``²``).
LABEL_TEXT = re.compile(r"-?[0-9]+")


def read_text(path: Path) -> str:
    """The text of a list file, or a :class:`DataError` naming it (unreadable, not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def read_json(path: Path):
    """The parsed content of a json split file, or a :class:`DataError` naming it."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid json ({e})") from e


def text_label(text: str, where: str) -> int:
    """The integer a list line's label field spells, or a :class:`DataError` naming ``where``."""
    if not LABEL_TEXT.fullmatch(text):
        raise DataError(f"{where}: label {text!r} is not an integer")
    return int(text)


def json_label(value, where: str) -> int:
    """A json label: an integer number only (not a float, string or boolean)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: label {json.dumps(value)} is not an integer")
    return value


def json_path(value, where: str) -> str:
    """A json image path: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: image path {json.dumps(value)} is not a non-empty string")
    return value


def lexically_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` lies in ``folder`` after resolving ``.``/``..`` by text (symlinks are not followed)."""
    base, target = os.path.abspath(folder), os.path.abspath(path)
    try:
        return os.path.commonpath([base, target]) == base
    except ValueError:  # different drives (Windows)
        return False


def check_inside(samples: Iterable[Sample], folder: Path) -> None:
    """Raise :class:`DataError` for the first sample whose image lies outside ``folder``."""
    for s in samples:
        if not lexically_inside(s.path, folder):
            raise DataError(
                f"{s.origin}: image path {str(s.path)!r} resolves to {os.path.abspath(s.path)}, outside the "
                f"dataset folder {os.path.abspath(folder)}; if your images really live elsewhere, allow it "
                "with allow_outside_root=True (CLI: --images-outside-root)"
            )
