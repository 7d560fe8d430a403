"""Under ``make test-lower`` the versions imported are the lower bounds ``pyproject.toml`` states."""

import os
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import peft
import pytest
import timm

ROOT = Path(__file__).resolve().parents[1]


def lower_bound(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(rf"{name}\b", d)]
    return re.search(r">=\s*([\w.]+)", spec).group(1)


@pytest.mark.skipif(
    "lower-bounds" not in os.environ.get("PYTHONPATH", ""), reason="only under make test-lower"
)
@pytest.mark.parametrize("module", [timm, peft], ids=["timm", "peft"])
def test_the_imported_versions_are_the_stated_lower_bounds(module):
    name = module.__name__
    assert module.__version__ == version(name)
    assert module.__version__.startswith(lower_bound(name))
