"""Reports: tables and plots from any set of run directories (:func:`write_report`).

Design notes: ``docs/design.md``, section ``vprompt/tools/report.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine.rundir import CONFIG, SUMMARY, RunDir, write_text
from ..files import ensure_dir
from ..methods import REFERENCE_METHOD, SITE_METHODS
from . import benchmarks, plots
from .executors import ERROR
from .tables import markdown, mean_std, pm, write_csv

#: config keys that do not change what a run computes (runs differing only in these are grouped)
EXECUTION = {"seed", "root", "device", "workers", "progress", "precision", "cache", "cache_dtype", "resolved"}
SPLIT_TITLES = {"test": "Test accuracy (final runs)", "val": "Validation accuracy (tuning runs)"}


@dataclass
class Run:
    """A finished run: its folder, summary and the options that define its configuration."""

    path: Path
    summary: dict[str, Any]
    options: dict[str, Any]
    #: what the run recorded as resolved (``config.yaml``'s ``resolved``: its recipe, ...); empty if not
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def split(self) -> str:
        return "test" if self.summary.get("test_accuracy") is not None else "val"

    @property
    def accuracy(self) -> float | None:
        return self.summary.get(f"{self.split}_accuracy")


def configuration(config: dict[str, Any]) -> dict[str, Any]:
    """The options that define a run's configuration: the config less seed and execution details,
    with the method's options flattened in (``site``, ``shape`` ...)."""
    flat = {k: v for k, v in config.items() if k not in EXECUTION and k != "method_options"}
    for k, v in (config.get("method_options") or {}).items():
        flat[f"method.{k}" if k in flat else k] = v
    return flat


def read_run(path: Path) -> Run:
    run = RunDir(path)
    summary = run.read_summary()
    if (path / CONFIG).is_file():
        config = run.read_config()
    else:  # only the summary: its own record of the run's options
        keys = ("backbone", "method", "method_options", "data", "protocol", "final", "selection", "epochs")
        config = {k: summary.get(k) for k in keys}
    resolved = config.get("resolved")
    return Run(path, summary, configuration(config), resolved if isinstance(resolved, dict) else {})


def find_runs(dirs: list[str | Path]) -> tuple[list[Run], list[dict[str, str]], list[str]]:
    """The finished runs under ``dirs``, the failed ones (``error.txt``) and the unfinished ones."""
    finished, failed, unfinished, seen = [], [], [], set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"no such folder: {d}")
        for marker in sorted(d.rglob(CONFIG)) + sorted(d.rglob(SUMMARY)) + sorted(d.rglob(ERROR)):
            run = marker.parent
            if run.resolve() in seen:
                continue
            seen.add(run.resolve())
            if (run / SUMMARY).is_file():
                try:
                    finished.append(read_run(run))
                except (ValueError, OSError, yaml.YAMLError, UnicodeDecodeError) as e:  # one bad run
                    failed.append({"run": str(run), "error": f"unreadable run files: {e}"})
            elif (run / ERROR).is_file():
                lines = (run / ERROR).read_text(errors="replace").strip().splitlines() or [""]
                failed.append({"run": str(run), "error": lines[-1]})
            else:
                unfinished.append(str(run))
    return finished, failed, unfinished


class Group:
    """The runs of one configuration, with their statistics."""

    def __init__(self, runs: list[Run]):
        self.runs = sorted(runs, key=lambda r: (r.summary.get("seed", 0), str(r.path)))
        first = self.runs[0]
        self.options, self.split = first.options, first.split
        self.data, self.method = first.options.get("data"), first.options.get("method")
        self.label = self.method

    def mean(self, key: str) -> float | None:
        values = [r.summary[key] for r in self.runs if r.summary.get(key) is not None]
        return sum(values) / len(values) if values else None

    def row(self) -> dict[str, Any]:
        accuracies = [r.accuracy for r in self.runs if r.accuracy is not None]
        mean, std = mean_std(accuracies) if accuracies else (None, None)
        s = self.runs[0].summary
        published = published_for(self)
        return {
            "data": self.data,
            "label": self.label,
            "method": self.method,
            "backbone": self.options.get("backbone"),
            "split": self.split,
            "n": len(accuracies),
            "seeds": " ".join(str(r.summary.get("seed")) for r in self.runs),
            "accuracy_mean": mean,
            "accuracy_std": std,
            "trainable_parameters": s.get("trainable_parameters"),
            "trainable_parameters_without_head": s.get("trainable_parameters_without_head"),
            "trainable_percent": s.get("trainable_percent"),
            "train_seconds": self.mean("train_seconds"),
            "peak_memory_mib": self.mean("peak_memory_mib"),
            "eval_images_per_second": self.mean("eval_images_per_second"),
            "published": published.value if published else None,
            "published_source": published.source if published else None,
            "options": json.dumps(self.options, sort_keys=True, default=str),
            "runs": " ".join(str(r.path) for r in self.runs),
        }


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped into configurations, each labelled by what sets it apart (see the module doc)."""
    by_key: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_key[json.dumps([r.split, r.options], sort_keys=True, default=str)].append(r)
    groups = [Group(rs) for rs in by_key.values()]
    siblings: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups:
        siblings[(g.data, g.options.get("backbone"), g.method, g.split)].append(g)
    for gs in siblings.values():
        keys = sorted({k for g in gs for k in g.options})
        varying = [k for k in keys if len({json.dumps(g.options.get(k), default=str) for g in gs}) > 1]
        for g in gs:
            g.label = " ".join([g.method] + [f"{k}={_value(g.options.get(k))}" for k in varying])
    return sorted(groups, key=lambda g: (g.split != "test", str(g.data), str(g.method), g.label))


# ------------------------------------------------------------------------------------------ tables
def cell_of(row: dict[str, Any]) -> tuple[str, str]:
    """The (dataset, backbone) cell of a result row: accuracies of different cells are never averaged."""
    return str(row["data"]), str(row["backbone"])


def pivot(rows: list[dict[str, Any]]) -> str:
    """(dataset, backbone) × configuration (mean ± std); the mean over the cells for configurations run on
    every one of them; the trainable parameters."""
    cells_seen = list(dict.fromkeys(cell_of(r) for r in rows))
    labels = sorted(dict.fromkeys(r["label"] for r in rows), key=lambda lb: (lb.split(" ")[0], lb))
    cells = {(*cell_of(r), r["label"]): r for r in rows}
    body = [[d, b] + [pm_row(cells.get((d, b, lb))) for lb in labels] for d, b in cells_seen]
    if len(cells_seen) > 1:
        means = []
        for lb in labels:
            have = [cells[(*c, lb)]["accuracy_mean"] for c in cells_seen if (*c, lb) in cells]
            complete = len(have) == len(cells_seen) and None not in have
            means.append(f"{sum(have) / len(have):.2f}" if complete else "–")
        body.append([f"**mean** of {len(cells_seen)}", "(rows above)"] + means)
    params = []
    for lb in labels:
        values = {r["trainable_parameters_without_head"] for r in rows if r["label"] == lb}
        params.append(f"{values.pop():,}" if len(values) == 1 and None not in values else "varies")
    body.append(["params w/o head", ""] + params)
    return markdown(["dataset", "backbone"] + labels, body)


def pm_row(row: dict[str, Any] | None) -> str:
    return "–" if row is None else pm(row["accuracy_mean"], row["accuracy_std"], row["n"])


def details(rows: list[dict[str, Any]]) -> str:
    headers = [
        "dataset",
        "backbone",
        "configuration",
        "n",
        "accuracy (%)",
        "trainable",
        "w/o head",
        "% of total",
        "train s",
        "peak MiB",
        "eval img/s",
    ]
    keys = [
        "trainable_parameters",
        "trainable_parameters_without_head",
        "trainable_percent",
        "train_seconds",
        "peak_memory_mib",
        "eval_images_per_second",
    ]
    body = [[r["data"], r["backbone"], r["label"], r["n"], pm_row(r)] + [r[k] for k in keys] for r in rows]
    return markdown(headers, body)


# ------------------------------------------------------------------------------------------- plots
def layer_series(groups: list[Group]) -> dict[str, list[tuple[str, float, float, int]]]:
    """Site-method (AP, AAP) configurations that differ only in their site: name → ``[(site, mean, std, n)]``.

    A series is named by what sets it apart from the other series (by dataset and shape when alone;
    options only one method has, such as AAP's ``hidden``, are left to the method's name)."""
    series: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    attrs: dict[str, dict[str, Any]] = {}
    for g in groups:
        row = g.row()
        if g.method not in SITE_METHODS or "site" not in g.options or row["accuracy_mean"] is None:
            continue
        a = {"split": g.split} | {k: v for k, v in g.options.items() if k != "site"}
        key = json.dumps(a, sort_keys=True, default=str)
        attrs[key] = a
        series[key].append((g.options["site"], row["accuracy_mean"], row["accuracy_std"], row["n"]))
    kept = {k: v for k, v in series.items() if len({s for s, *_ in v}) > 1}
    names = sorted({n for k in kept for n in attrs[k] if all(n in attrs[j] for j in kept)})
    varying = [n for n in names if len({json.dumps(attrs[k].get(n), default=str) for k in kept}) > 1]
    shown = ["split"] + ([n for n in varying if n != "split"] or ["data", "shape"])
    return {" ".join(f"{n}={_value(attrs[k].get(n))}" for n in shown): v for k, v in kept.items()}


def caption(groups: list[Group]) -> str:
    """Dataset, backbone, input size and budget of ``groups``, for a figure (values that vary joined by /)."""

    def values(key: str) -> str:
        seen = list(
            dict.fromkeys(_value(g.options.get(key)) for g in groups if g.options.get(key) is not None)
        )
        return " / ".join(seen)

    parts = [values("data"), values("backbone")]
    if values("img_size"):
        parts.append(f"{values('img_size')} px")
    train = values("train_size")
    parts.append(f"{train} training images" if train else "all training images")
    if values("epochs"):
        parts.append(f"{values('epochs')} epochs")
    return " · ".join(p for p in parts if p)


def linear_references(
    groups: list[Group], series_groups: list[Group]
) -> dict[str, tuple[float, float | None]]:
    """The linear-probe configurations on the data and split of ``series_groups``: label → (mean, std)."""
    wanted = {(g.data, g.split, g.options.get("backbone")) for g in series_groups}
    refs = {}
    for g in groups:
        row = g.row()
        if (
            g.method == REFERENCE_METHOD
            and (g.data, g.split, g.options.get("backbone")) in wanted
            and row["n"]
        ):
            refs[f"{g.label.replace('linear', 'linear probe', 1)} (n={row['n']})"] = (
                row["accuracy_mean"],
                row["accuracy_std"],
            )
    return refs


def common_cells(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (dataset, backbone) cells on which every configuration label of ``rows`` has an accuracy."""
    by_label: dict[str, set] = defaultdict(set)
    for r in rows:
        if r["accuracy_mean"] is not None:
            by_label[r["label"]].add(cell_of(r))
    return sorted(set.intersection(*by_label.values())) if by_label else []


def tradeoff_points(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """One point per configuration label: means over the (dataset, backbone) cells that every label was
    run on (:func:`common_cells`), and those cells; no points when there are none. With one cell a point
    also carries its seed spread (``accuracy_std``) and ``n``."""
    common = common_cells(rows)
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["accuracy_mean"] is not None and cell_of(r) in common:
            by_label[r["label"]].append(r)
    points = []
    for label, rs in by_label.items():
        point = {"label": label}
        for key, source in (
            ("accuracy", "accuracy_mean"),
            ("trainable_parameters", "trainable_parameters"),
            ("train_seconds", "train_seconds"),
            ("peak_memory_mib", "peak_memory_mib"),
        ):
            values = [r[source] for r in rs if r[source] is not None]
            point[key] = sum(values) / len(values) if values else None
        if len(rs) == 1:
            point |= {"accuracy_std": rs[0]["accuracy_std"], "n": rs[0]["n"]}
        points.append(point)
    return points, common


def cells_text(cells: list[tuple[str, str]], most: int = 4) -> str:
    """``d1 on b1, d2 on b1`` (``N (dataset, backbone) cells`` when there are more than ``most``)."""
    if len(cells) > most:
        return f"{len(cells)} (dataset, backbone) cells, listed in report.md"
    return ", ".join(f"{d} on {b}" for d, b in cells)


# ------------------------------------------------------------------------------------------ header
#: a run's role in a sweep: final runs (final split → test) and tuning runs (tuning split → validation)
ROLES = {"final": "final runs", "tuning": "tuning runs"}
NOT_RECORDED = "not recorded"


def role(run: Run) -> str:
    final = run.summary.get("final", run.options.get("final"))
    return "final" if (run.split == "test" if final is None else final) else "tuning"


def _distinct(values) -> list:
    return list(dict.fromkeys(v for v in values if v is not None))


def _joined(values, none: str = NOT_RECORDED) -> str:
    return " / ".join(_value(v) for v in _distinct(values)) or none


def _span(runs: list[Run], split: str) -> str:
    """The images a split used over ``runs``: ``200``, ``60–100``, ``–`` (not used) or not recorded."""
    sizes = [r.summary.get("sizes") for r in runs]
    if not any(isinstance(s, dict) for s in sizes):
        return NOT_RECORDED
    used = [s[split] for s in sizes if isinstance(s, dict) and s.get(split) is not None]
    if not used:
        return "–"
    return f"{min(used):,}" if min(used) == max(used) else f"{min(used):,}–{max(used):,}"


def _spans(runs: list[Run]) -> str:
    spans = [_span(runs, s) for s in ("train", "val", "test")]
    return NOT_RECORDED if set(spans) == {NOT_RECORDED} else " / ".join(spans)


def _per_role(runs: list[Run], text) -> str:
    """``text(runs of a role)`` for each role present, or once when every role gives the same."""
    parts = {k: text([r for r in runs if role(r) == k]) for k in ROLES if any(role(r) == k for r in runs)}
    if len(set(parts.values())) == 1:
        return next(iter(parts.values()))
    return "; ".join(f"{ROLES[k]}: {v}" for k, v in parts.items())


def header(runs: list[Run], suite: tuple[str, list[str]] | None = None) -> str:
    """What ``runs`` ran, for the top of a summary: backbone (and whether it had pretrained weights),
    input size, epochs, images per split, seeds, each benchmark's tasks present and missing, and the
    options that differ from the recipe. ``suite``: ``(family, tasks asked for)`` of a suite."""
    backbones = []
    for b in _distinct(r.options.get("backbone") for r in runs):
        these = [r for r in runs if r.options.get("backbone") == b]
        random = sum(bool(r.options.get("random_init")) for r in these)
        note = ""
        if random:
            note = " — **random init: no pretrained weights**"
            note += "" if random == len(these) else f" in {random} of {len(these)} runs"
        backbones.append(f"`{b}`{note}")
    lines = [
        f"- **Backbone:** {', '.join(backbones) or NOT_RECORDED}",
        f"- **Input size:** {_joined(r.options.get('img_size') for r in runs)}"
        + (" px" if any(r.options.get("img_size") for r in runs) else ""),
        f"- **Epochs:** {_per_role(runs, lambda rs: _joined(r.options.get('epochs') for r in rs))}",
        "- **Images used** (train / val / test): " + _per_role(runs, _spans),
        "- **Seeds:** "
        + _per_role(
            runs, lambda rs: ", ".join(map(str, sorted(_distinct(r.summary.get("seed") for r in rs))))
        ),
    ]
    lines += task_lines(runs, suite)
    lines.append(recipe_line(runs))
    return "\n".join(lines) + "\n"


def task_lines(runs: list[Run], suite: tuple[str, list[str]] | None = None) -> list[str]:
    """Per benchmark family among the runs' data: the tasks present and those missing. In a suite, a task
    is present when it has a test accuracy; one asked for without one is named as such."""
    found: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        hit = benchmarks.family_of(r.options.get("data"))
        if hit and (suite is None or r.summary.get("test_accuracy") is not None):
            found[hit[0]].add(hit[1])
    families = [suite[0]] if suite else [f for f in benchmarks.FAMILIES if f in found]
    lines = []
    for family in families:
        tasks = benchmarks.FAMILIES[family]
        present = [t for t in tasks if t in found[family]]
        text = f"- **Tasks ({family}):** {len(present)} of {len(tasks)}"
        text += f" ({', '.join(present)})" if present else ""
        if suite:
            failed = [t for t in suite[1] if t not in found[family]]
            if failed:
                text += f"; asked for but without a test accuracy: {', '.join(failed)}"
            missing = [t for t in tasks if t not in suite[1]]
        else:
            missing = [t for t in tasks if t not in found[family]]
        if missing:
            text += f"; not run: {', '.join(missing)}"
        lines.append(text)
    return lines


def recipe_line(runs: list[Run]) -> str:
    """The recipe(s) the runs used and every option whose value differs from the recipe's."""
    names = _distinct(r.options.get("recipe") for r in runs)
    without = sum(not r.options.get("recipe") for r in runs)
    if not names:
        return "- **Recipe:** none (every option as given)"
    parts = []
    for name in names:
        these = [r for r in runs if r.options.get("recipe") == name]
        recorded = [r.resolved["recipe"] for r in these if isinstance(r.resolved.get("recipe"), dict)]
        differs: dict[str, tuple[Any, list]] = {}
        for record in recorded:
            for key, values in (record.get("overridden") or {}).items():
                wanted, used = differs.get(key, (values.get("recipe"), []))
                differs[key] = (wanted, used + [values.get("used")])
        if not recorded:
            what = "what differs from it is not recorded"
        elif differs:
            what = "options that differ from it: " + ", ".join(
                f"`{k}` {_joined(used, 'unset')} (recipe: {_value(wanted)})"
                for k, (wanted, used) in sorted(differs.items())
            )
        else:
            what = "no option differs from it"
        parts.append(f"`{name}` ({len(these)} runs; {what})")
    if without:
        parts.append(f"none for {without} runs")
    return "- **Recipe:** " + "; ".join(parts)


# ------------------------------------------------------------------------------ benchmarks, published
def benchmark_sections(groups: list[Group]) -> list[str]:
    """For each benchmark family among the final (test) configurations: its means per configuration,
    each only over a complete set (VTAB-1k: the group means, the mean of 19 tasks and the mean of the 3
    group means, labelled), with the published numbers' means where every task has one."""
    text = []
    finals = [g for g in groups if g.split == "test" and benchmarks.family_of(g.data)]
    for family in benchmarks.FAMILIES:
        these = [g for g in finals if benchmarks.family_of(g.data)[0] == family]
        if not these:
            continue
        configs: dict[tuple, dict[str, float]] = defaultdict(dict)
        for g in these:
            key = (g.label, g.options.get("backbone"), g.method, bool(g.options.get("random_init")))
            mean = g.row()["accuracy_mean"]
            if mean is not None:
                configs[key][benchmarks.family_of(g.data)[1]] = mean
        labels = None
        body = []
        for (label, backbone, method, random), accuracies in configs.items():
            means = benchmarks.means(family, accuracies)
            labels = [m["label"] for m in means.values()]
            body.append([label, backbone] + [benchmarks.mean_cell(m) for m in means.values()])
            published = {
                t: p.value
                for t in benchmarks.FAMILIES[family]
                if (p := benchmarks.find_published(backbone, method, f"{family}:{t}", random_init=random))
            }
            if len(published) == len(benchmarks.FAMILIES[family]):
                p = benchmarks.find_published(backbone, method, f"{family}:{benchmarks.FAMILIES[family][0]}")
                body.append(
                    [f"↳ published: {p.citation}, Table {p.table}", backbone]
                    + [benchmarks.mean_cell(m) for m in benchmarks.means(family, published).values()]
                )
        if body:
            text += [
                f"## {family} means (test)\n",
                "Each mean only over a complete set: a group or suite with a task missing shows "
                "`incomplete (k of n)`. Published means are computed from the published per-task values.\n",
                markdown(["configuration", "backbone"] + labels, body),
            ]
    return text


def published_section(groups: list[Group]) -> list[str]:
    """The published numbers beside the measured ones: only for a final configuration whose backbone,
    method and task have one (and that started from pretrained weights)."""
    body = []
    for g in groups:
        p = published_for(g)
        if p is not None:
            body.append(
                [g.data, g.options.get("backbone"), g.label, pm_row(g.row()), f"{p.value:.2f}", p.source]
            )
    if not body:
        listed = "; ".join(
            f"{b}: {', '.join(sorted({p.method for p in have}))} on "
            f"{', '.join(sorted({p.data.split(':')[0] for p in have}))}"
            for b in sorted({p.backbone for p in benchmarks.published()})
            if (have := [p for p in benchmarks.published() if p.backbone == b])
        )
        return [
            "## Published numbers\n",
            "No configuration here has a published number for its backbone, method and task (published "
            f"numbers, `vprompt/tools/published.yaml`, exist for: {listed}).\n",
        ]
    return [
        "## Published numbers beside the measured ones\n",
        "Same backbone, method and task only; the paper's protocol may still differ from these runs' "
        "(see the header).\n",
        markdown(["dataset", "backbone", "configuration", "measured (%)", "published (%)", "source"], body),
    ]


def published_for(group: Group) -> benchmarks.Published | None:
    """The published number for a final configuration's backbone, method and task, if there is one."""
    if group.split != "test":
        return None
    options = group.options
    return benchmarks.find_published(
        options.get("backbone"), group.method, group.data, random_init=bool(options.get("random_init"))
    )


# ------------------------------------------------------------------------------------------ report
def write_report(
    dirs: list[str | Path] | str | Path,
    out: str | Path,
    *,
    formats: tuple[str, ...] = ("png",),
    size: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``results.csv``, ``runs.csv`` and the plots to ``out``; returns
    ``{"rows": [one dict per configuration], "files": {...}, "failed": [...], "unfinished": [...]}``.

    ``formats``: the plots' file formats (``png``, ``pdf``, ``svg``); ``size``: inches per panel."""
    formats = plots.check_formats(formats)
    dirs = [dirs] if isinstance(dirs, str | Path) else list(dirs)
    out = Path(out)
    runs, failed, unfinished = find_runs(dirs)
    if not runs and not failed:
        raise ValueError(f"no run directories (summary.json) under {', '.join(map(str, dirs))}")
    ensure_dir(out, "report folder (--output)")
    groups = group_runs(runs)
    rows = [g.row() for g in groups]
    files = {"md": out / "report.md", "results": out / "results.csv", "runs": out / "runs.csv"}
    if rows:
        write_csv(files["results"], list(rows[0]), [list(r.values()) for r in rows])
    else:  # only failed runs: the report lists them
        del files["results"]
    run_keys = [
        "run",
        "data",
        "label",
        "split",
        "seed",
        "accuracy",
        "trainable_parameters",
        "trainable_parameters_without_head",
        "train_seconds",
        "peak_memory_mib",
    ]
    write_csv(
        files["runs"],
        run_keys,
        [
            [str(r.path), g.data, g.label, r.split, r.summary.get("seed"), r.accuracy]
            + [r.summary.get(k) for k in run_keys[6:]]
            for g in groups
            for r in g.runs
        ],
    )
    text = [
        f"# vprompt report\n\n{len(runs)} finished runs in {len(groups)} configurations from "
        f"{', '.join(f'`{d}`' for d in dirs)}. Accuracy in %: mean ± sample std over the runs (n).\n"
    ]
    if runs:
        text.append(header(runs))
    for split, title in SPLIT_TITLES.items():
        chosen = [r for r in rows if r["split"] == split]
        if chosen:
            text += [f"## {title}\n", pivot(chosen), "### Every configuration\n", details(chosen)]
    if runs:
        text += benchmark_sections(groups) + published_section(groups)
    text += _plots(groups, rows, out, files, formats, size)
    if failed:
        text += ["## Failed runs\n", markdown(["run", "error"], [[f["run"], f["error"]] for f in failed])]
    if unfinished:
        text += ["## Unfinished runs\n", "\n".join(f"- `{u}`" for u in unfinished) + "\n"]
    write_text(files["md"], "\n".join(text))
    return {
        "rows": rows,
        "files": {k: str(v) for k, v in files.items()},
        "failed": failed,
        "unfinished": unfinished,
    }


def _plots(
    groups: list[Group], rows: list[dict], out: Path, files: dict[str, Path], formats, size
) -> list[str]:
    text = []
    series = layer_series(groups)
    if series:
        site_groups = [g for g in groups if g.method in SITE_METHODS and "site" in g.options]
        files["layer_preference"] = plots.layer_preference(
            series,
            out / "layer_preference.png",
            references=linear_references(groups, site_groups),
            caption=caption(site_groups),
            formats=formats,
            size=size,
        )
        text.append("![layer preference](layer_preference.png)\n")
    split = "test" if any(r["split"] == "test" for r in rows) else "val"
    chosen_rows = [r for r in rows if r["split"] == split]
    points, common = tradeoff_points(chosen_rows)
    if points:
        chosen = [g for g in groups if g.split == split and cell_of(g.row()) in common]
        where = f"mean over {cells_text(common)}" if len(common) > 1 else cells_text(common)
        title = f"{split} accuracy, {where}\n{caption(chosen)}"
        panels = {"accuracy_vs_parameters": ["trainable_parameters"]}
        panels["accuracy_vs_cost"] = ["train_seconds", "peak_memory_mib"]
        for key, axes in panels.items():
            files[key] = plots.tradeoffs(points, axes, out / f"{key}.png", title, formats=formats, size=size)
        text += [
            f"Accuracy against cost, each configuration's {split} accuracy averaged over the same "
            f"{len(common)} (dataset, backbone) cell(s): {cells_text(common, most=len(common))}.\n",
            "![accuracy vs trainable parameters](accuracy_vs_parameters.png)\n",
            "![accuracy vs train time and peak memory](accuracy_vs_cost.png)\n",
        ]
    elif chosen_rows:
        runs_on = defaultdict(list)
        for r in chosen_rows:
            runs_on[r["label"]].append(" on ".join(cell_of(r)))
        text.append(
            "No accuracy-vs-cost plots: the configurations share no (dataset, backbone) cell, so a mean over "
            "each one's own cells would not compare ("
            + "; ".join(f"{lb}: {', '.join(cs)}" for lb, cs in sorted(runs_on.items()))
            + ").\n"
        )
    return (["## Plots\n"] + text) if text else []
