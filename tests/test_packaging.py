"""The package installs like a library: bounds in its metadata, the exact versions in constraints.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^([A-Za-z0-9_.-]+)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"": project["dependencies"], **project["optional-dependencies"]}


def test_no_exact_pins_in_the_metadata_and_lower_bounds_everywhere():
    for extra, reqs in requirements().items():
        for req in reqs:
            assert "==" not in req, f"{extra or 'dependencies'}: {req} pins an exact version"
            assert ">=" in req, f"{extra or 'dependencies'}: {req} has no lower bound"


def test_transformers_is_not_a_direct_dependency():
    names = {norm(NAME.match(r).group(1)) for r in requirements()[""]}
    assert "transformers" not in names
    src = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    assert not re.search(r"^\s*(import|from) transformers\b", src, re.M)


def test_constraints_pin_every_requirement_and_make_uses_them():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[norm(name)] = version
    for reqs in requirements().values():
        for req in reqs:
            assert norm(NAME.match(req).group(1)) in pins, f"{req} is not pinned in constraints.txt"
    assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in pins.values()), pins
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_the_onnx_extra_is_named_export():
    extras = requirements()
    assert "export" in extras and "offline" not in extras
    assert {norm(NAME.match(r).group(1)) for r in extras["export"]} == {"onnx", "onnxruntime"}
