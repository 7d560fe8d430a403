"""Recipes: the papers' training protocols as data, one YAML file each in this folder.

Explicit options win over a recipe (:func:`apply`); a run records what the recipe set (:func:`record`).
Design notes: ``docs/design.md``, section ``vprompt/recipes/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..options import coerce

#: top-level keys of a recipe file
KEYS = ("name", "summary", "paper", "sources", "methods", "options", "datasets", "tune", "notes")
#: run options a recipe may not set (what to train on, and where, is the user's)
NOT_SET = ("recipe", "method", "method_options", "data", "root")
TUNE_KEYS = ("lrs", "wds", "seeds")
#: run option → its type, declared here by :mod:`vprompt.engine.config` (``TrainConfig``'s fields) when the
#: engine is imported: the engine applies recipes, so recipes never import the engine
RUN_OPTIONS: dict[str, Any] = {}


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    paper: str
    sources: tuple[dict, ...]
    #: method name → its options
    methods: dict[str, dict[str, Any]]
    #: run options (``TrainConfig`` fields)
    options: dict[str, Any]
    #: dataset spec → run options for that dataset
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``lrs``, ``wds`` and ``seeds`` for ``sweep tune|suite`` (each optional)
    tune: dict[str, list] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    path: str = ""

    def method_for(self, method: str | None) -> str:
        """The method a run uses: the one given (it must be one of the recipe's), or the recipe's only one."""
        if method:
            if method not in self.methods:
                raise ValueError(
                    f"recipe {self.name!r} is for {', '.join(self.methods)}, not {method!r}; "
                    "choose one of those methods or another recipe"
                )
            return method
        if len(self.methods) == 1:
            return next(iter(self.methods))
        raise ValueError(
            f"recipe {self.name!r} is for several methods; choose one: {', '.join(self.methods)}"
        )

    def values(self, method: str | None = None, data: str | None = None) -> dict[str, Any]:
        """The run options the recipe sets for ``method`` on ``data`` (its method options under
        ``method_options``)."""
        method = self.method_for(method)
        values = {**self.options, **self.datasets.get(_spec(data), {})} if data else dict(self.options)
        return {**values, "method": method, "method_options": dict(self.methods[method])}


def _spec(data: str | None) -> str:
    return (data or "").strip().lower()


def recipe_dir() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """The shipped recipes, sorted."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


@cache
def load(name: str) -> Recipe:
    """The recipe called ``name`` (a clear error listing the others when there is none)."""
    path = recipe_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(names())}")
    return parse(yaml.safe_load(path.read_text()), str(path), name)


def text(name: str) -> str:
    """The recipe's YAML file as written (sources and notes included)."""
    load(name)
    return (recipe_dir() / f"{name}.yaml").read_text()


def parse(data: Any, where: str, name: str | None = None) -> Recipe:
    """A :class:`Recipe` from a YAML mapping, checked (``where`` names the file in errors)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a recipe is a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown recipe key(s) {', '.join(unknown)}; valid: {', '.join(KEYS)}")
    for key in ("name", "summary", "paper", "sources", "methods"):
        if not data.get(key):
            raise ValueError(f"{where}: recipe needs {key!r}")
    if name is not None and data["name"] != name:
        raise ValueError(f"{where}: the recipe is named {data['name']!r}, its file {name!r}")
    sources = data["sources"]
    if not isinstance(sources, list) or not all(
        isinstance(s, dict) and s.get("repo") and s.get("file") for s in sources
    ):
        raise ValueError(f"{where}: every source needs a repo and a file")
    methods = data["methods"]
    if not isinstance(methods, dict) or not all(isinstance(v, dict | None) for v in methods.values()):
        raise ValueError(f"{where}: methods maps each method name to its options (a mapping)")
    options = check_options(data.get("options") or {}, f"{where}: options")
    datasets = {
        _spec(spec): check_options(values or {}, f"{where}: datasets.{spec}")
        for spec, values in (data.get("datasets") or {}).items()
    }
    tune = data.get("tune") or {}
    bad = [k for k in tune if k not in TUNE_KEYS]
    if bad:
        raise ValueError(f"{where}: unknown tune key(s) {', '.join(bad)}; valid: {', '.join(TUNE_KEYS)}")
    for key, values in tune.items():
        kind = int if key == "seeds" else (int, float)
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values)
        ):
            raise ValueError(f"{where}: tune.{key} must be a non-empty list of numbers")
    return Recipe(
        data["name"],
        data["summary"],
        data["paper"],
        tuple(sources),
        {m: dict(o or {}) for m, o in methods.items()},
        options,
        datasets,
        {k: list(v) for k, v in tune.items()},
        tuple(data.get("notes") or ()),
        where,
    )


def check_options(values: Any, where: str) -> dict[str, Any]:
    """Run options a recipe sets: known ``TrainConfig`` fields, each of its field's type."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of run options")
    known = hints = RUN_OPTIONS
    for key in values:
        if key not in known or key in NOT_SET:
            valid = ", ".join(k for k in known if k not in NOT_SET)
            raise ValueError(f"{where}: a recipe cannot set {key!r}; run options it may set: {valid}")
    try:
        for key, value in values.items():
            coerce(key, value, hints[key])  # the run options' own check; the values are typed when used
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return dict(values)


def apply(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (run options as given) on top of the recipe they name; unchanged without a recipe.

    Given options win, including given method options; ``None`` and an empty method count as not given.
    """
    name = values.get("recipe")
    if not name:
        return values
    recipe = load(name)
    given = {k: v for k, v in values.items() if v is not None and k != "method_options"}
    if not given.get("method"):
        given.pop("method", None)
    base = recipe.values(given.get("method"), given.get("data"))
    options = {**base.pop("method_options"), **(values.get("method_options") or {})}
    return {**base, **given, "method_options": options}


def record(config_values: dict[str, Any]) -> dict[str, Any] | None:
    """What a run records about its recipe: name, file, sources, every value it set as run, and the
    values explicit options overrode (``{key: {"recipe": ..., "used": ...}}``)."""
    name = config_values.get("recipe")
    if not name:
        return None
    recipe = load(name)
    wanted = recipe.values(config_values.get("method"), config_values.get("data"))
    flat = {k: v for k, v in wanted.items() if k != "method_options"}
    flat |= {f"method_options.{k}": v for k, v in wanted["method_options"].items()}
    used = {k: v for k, v in config_values.items() if k != "method_options"}
    used |= {f"method_options.{k}": v for k, v in (config_values.get("method_options") or {}).items()}
    same = {k: v for k, v in flat.items() if used.get(k) == v}
    return {
        "name": recipe.name,
        "file": Path(recipe.path).name,
        "sources": [f"{s['repo']}:{s['file']}" for s in recipe.sources],
        "set": same,
        "overridden": {k: {"recipe": v, "used": used.get(k)} for k, v in flat.items() if k not in same},
    }


def tuning(name: str | None) -> dict[str, list]:
    """The recipe's tuning grid and seeds (``{}`` without a recipe)."""
    return dict(load(name).tune) if name else {}


__all__ = ["Recipe", "apply", "load", "names", "parse", "record", "text", "tuning"]
