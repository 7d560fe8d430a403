"""Benchmark suites for summaries: their tasks, VTAB-1k's groups, means over complete sets only, and the
papers' published numbers (``published.yaml``, read with ``yaml.safe_load``).

Design notes: ``docs/design.md``, section ``vprompt/tools/benchmarks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..data.sources import COOP, FGVC, VP_TORCHVISION, VTAB_TASKS

#: the datasets of each benchmark family, in the papers' order
FAMILIES: dict[str, list[str]] = {
    "vtab1k": list(VTAB_TASKS),
    "fgvc": list(FGVC),
    "vp": list(VP_TORCHVISION) + list(COOP),
}
#: VTAB-1k's three task groups, whose means papers report next to the overall mean
# fmt: off
VTAB_GROUPS = {
    "natural": ["caltech101", "cifar", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"],
}
# fmt: on
#: the data file of published numbers, inside this package
PUBLISHED = "published.yaml"


def family_of(data: str | None) -> tuple[str, str] | None:
    """``("vtab1k", "dtd")`` for the data spec ``vtab1k:dtd``; ``None`` for data outside the families."""
    family, _, task = str(data or "").strip().lower().partition(":")
    return (family, task) if family in FAMILIES and task in FAMILIES[family] else None


# -------------------------------------------------------------------------------------------- means
def means(family: str, accuracies: dict[str, float]) -> dict[str, dict[str, Any]]:
    """The summary means of ``family`` from ``{task: accuracy}``, each over a complete set only.

    VTAB-1k: each group's mean (``natural``, ``specialized``, ``structured``), ``all`` (the mean of the 19
    tasks) and ``groups`` (the mean of the 3 group means), the two means papers quote as "the VTAB-1k
    mean"; other families: ``all``. Each entry: ``{"label", "mean", "have", "of", "complete"}``; ``mean``
    is ``None`` unless every task it averages has an accuracy (``have`` of ``of`` do).
    """
    tasks = FAMILIES[family]
    unknown = sorted(set(accuracies) - set(tasks))
    if unknown:
        raise ValueError(f"{family} has no task {', '.join(unknown)}")
    groups = VTAB_GROUPS if family == "vtab1k" else {}
    out: dict[str, dict[str, Any]] = {}
    for name, members in groups.items():
        out[name] = _mean(f"{name} mean", members, accuracies)
    noun = "tasks" if family == "vtab1k" else "datasets"
    out["all"] = _mean(f"mean of {len(tasks)} {noun}", tasks, accuracies)
    if groups:
        complete = [out[g] for g in groups if out[g]["complete"]]
        out["groups"] = {
            "label": f"mean of the {len(groups)} group means",
            "mean": sum(g["mean"] for g in complete) / len(groups) if len(complete) == len(groups) else None,
            "have": len(complete),
            "of": len(groups),
            "complete": len(complete) == len(groups),
        }
    return out


def _mean(label: str, members: list[str], accuracies: dict[str, float]) -> dict[str, Any]:
    have = [accuracies[t] for t in members if accuracies.get(t) is not None]
    complete = len(have) == len(members)
    return {
        "label": label,
        "mean": sum(have) / len(have) if complete else None,
        "have": len(have),
        "of": len(members),
        "complete": complete,
    }


def mean_cell(entry: dict[str, Any], digits: int = 2) -> str:
    """A mean for a table: the value, or ``incomplete (k of n)`` (groups: ``k of n complete``)."""
    if entry["mean"] is not None:
        return f"{entry['mean']:.{digits}f}"
    what = " groups complete" if entry["label"].endswith("group means") else ""
    return f"incomplete ({entry['have']} of {entry['of']}{what})"


# ---------------------------------------------------------------------------------------- published
@dataclass(frozen=True)
class Published:
    """One published accuracy: what the paper ran (method, backbone, task) and where it printed it."""

    paper: str  # the paper's key in the data file
    citation: str
    table: str
    where: str
    backbone: str
    method: str
    data: str  # ``family:task``
    value: float

    @property
    def source(self) -> str:
        return f"{self.citation}, Table {self.table}"


RESULT_KEYS = {"paper", "table", "where", "backbone", "benchmark", "method", "values", "checked"}


def published_path() -> Path:
    return Path(str(resources.files(__package__))) / PUBLISHED


def parse_published(data: Any, where: str = PUBLISHED) -> list[Published]:
    """The entries of a published-numbers mapping, checked (``where`` names the file in errors)."""
    from ..methods import METHODS

    if not isinstance(data, dict) or set(data) != {"papers", "results"}:
        raise ValueError(f"{where}: expected a mapping with exactly 'papers' and 'results'")
    papers = data["papers"]
    if not isinstance(papers, dict) or not all(
        isinstance(p, dict) and isinstance(p.get("citation"), str) and isinstance(p.get("url"), str)
        for p in papers.values()
    ):
        raise ValueError(f"{where}: every paper needs a citation and a url")
    entries: list[Published] = []
    seen: set[tuple[str, str, str]] = set()
    for i, block in enumerate(data["results"] or []):
        at = f"{where}: results[{i}]"
        if not isinstance(block, dict) or set(block) != RESULT_KEYS:
            raise ValueError(f"{at}: expected exactly the keys {', '.join(sorted(RESULT_KEYS))}")
        if block["paper"] not in papers:
            raise ValueError(f"{at}: unknown paper {block['paper']!r}; the file lists {', '.join(papers)}")
        for key in ("table", "where", "backbone"):
            if not isinstance(block[key], str) or not block[key].strip():
                raise ValueError(f"{at}: {key} must be a non-empty string")
        if block["method"] not in METHODS:
            raise ValueError(f"{at}: unknown method {block['method']!r}")
        family = block["benchmark"]
        if family not in FAMILIES:
            raise ValueError(f"{at}: unknown benchmark {family!r}; choose one of: {', '.join(FAMILIES)}")
        checked = block["checked"]
        if not isinstance(checked, list) or not checked or not all(isinstance(c, str) for c in checked):
            raise ValueError(f"{at}: checked lists (as text) what the values were checked against")
        values = block["values"]
        if not isinstance(values, dict) or not values:
            raise ValueError(f"{at}: values maps each task to its accuracy")
        for task, value in values.items():
            if task not in FAMILIES[family]:
                raise ValueError(f"{at}: {family} has no task {task!r}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
                raise ValueError(f"{at}: {task}: {value!r} is not an accuracy in % (0 to 100)")
            key = (block["backbone"], block["method"], f"{family}:{task}")
            if key in seen:
                raise ValueError(f"{at}: a second value for {' · '.join(key)}")
            seen.add(key)
            entries.append(
                Published(
                    block["paper"],
                    papers[block["paper"]]["citation"],
                    block["table"],
                    block["where"],
                    block["backbone"],
                    block["method"],
                    f"{family}:{task}",
                    float(value),
                )
            )
    return entries


@cache
def published() -> tuple[Published, ...]:
    """The packaged published numbers (``published.yaml``)."""
    path = published_path()
    return tuple(parse_published(yaml.safe_load(path.read_text()), path.name))


def find_published(
    backbone: str | None,
    method: str | None,
    data: str | None,
    *,
    random_init: bool = False,
    entries: tuple[Published, ...] | list[Published] | None = None,
) -> Published | None:
    """The published number for exactly this backbone, method and task; ``None`` when there is none or
    the run had no pretrained weights (``random_init``)."""
    if random_init or not backbone or not method or family_of(data) is None:
        return None
    spec = ":".join(family_of(data))
    for p in published() if entries is None else entries:
        if (p.backbone, p.method, p.data) == (backbone, method, spec):
            return p
    return None
