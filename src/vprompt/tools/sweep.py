"""Sweeps: many runs planned from one base config, run by an :class:`~.executors.Executor`, summarised.

:func:`layers`, :func:`tune`, :func:`suite`; the tuning rule is in :mod:`.tuning`.
Design notes: ``docs/design.md``, section ``vprompt/tools/sweep.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import recipes
from ..data import describe
from ..engine.config import check_config, make_config, to_dict
from ..engine.run import as_config
from ..engine.rundir import write_json, write_text
from ..methods import SITE_METHODS, method_config
from . import benchmarks, plots, report
from .benchmarks import FAMILIES, VTAB_GROUPS  # noqa: F401  (sweep.FAMILIES, sweep.VTAB_GROUPS)
from .compute import account, combine, write_compute
from .executors import Executor, Job, failures, one_sweep_at_a_time, write_failures
from .search import SEARCHES, Asha, load_optuna
from .tables import markdown, mean_std, pm, write_csv
from .tuning import Plan, run_plans

#: the layer sweep's markdown columns: row key → header
LAYER_COLUMNS = {
    "site": "site",
    "depth": "depth",
    "split": "split",
    "accuracy": "accuracy (%)",
    "trainable_parameters_without_head": "params (w/o head)",
    "train_seconds": "train s",
    "peak_memory_mib": "peak MiB",
    "status": "status",
}
#: the columns ``analyze=`` adds: row key → header
ANALYSIS_COLUMNS = {
    "cka_final": "CKA→pre_logits",
    "cka_previous": "CKA→previous",
    "attention_distance_fraction": "attn dist / image",
    "erf_r50_fraction": "ERF r50 / image",
}


# ------------------------------------------------------------------------------------------ planning
def base_config(config: Any, **overrides: Any) -> dict[str, Any]:
    """The full run config (every :class:`~vprompt.TrainConfig` field) of ``config`` with ``overrides``."""
    if isinstance(config, dict):
        config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    return to_dict(as_config(config, dict(overrides)))


def check_base(base: dict[str, Any], data: bool = True, final: bool = False) -> None:
    """Errors every run would hit (missing options, unknown method or options, no data) before any run;
    ``final``: also the final phase's splits (a grid is not trained for final runs that cannot start)."""
    check_config(make_config(dict(base)))
    method_config(base["method"], **base["method_options"])
    if data:
        from ..engine.config import DataOptions
        from ..engine.run_data import data_spec, plan_data

        describe(data_spec(make_config(dict(base))), base["root"])
        if final:  # the final runs' splits, before a grid is trained for final runs that cannot start
            try:
                plan_data(make_config(dict(base, final=True)).section(DataOptions))
            except ValueError as e:
                raise ValueError(
                    f"the final runs of this sweep could not start, so nothing was trained: {e} "
                    "(--final-train train trains them on the train split alone)"
                ) from None


def _g(x: float | None) -> str | None:
    return None if x is None else f"{x:g}"


def _split(summary: dict | None) -> str:
    return "test" if summary and summary.get("test_accuracy") is not None else "val"


# -------------------------------------------------------------------------------------------- layers
def site_depths(base: dict[str, Any]) -> dict[str, int]:
    """``site → depth index`` of the base config's backbone (built without pretrained weights)."""
    from ..backbones import create_backbone

    backbone = create_backbone(base["backbone"], img_size=base["img_size"], pretrained=False)
    return {name: site.index for name, site in backbone.sites.items()}


#: ``sweep layers``' default method; its files keep the short name ``layers-<shape>``
LAYER_METHOD = "ap"


def layers_name(method: str, shape: str) -> str:
    return shape if method == LAYER_METHOD else f"{method}-{shape}"


@one_sweep_at_a_time
def layers(
    config: Any,
    out: str | Path,
    *,
    sites: list[str] | None = None,
    shape: str = "full",
    method: str = LAYER_METHOD,
    seeds: int | list[int] | None = None,
    executor: Executor | None = None,
    analyze: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``method`` (a site method: ``ap``, ``aap``) at each of ``sites`` (default: ``embed`` where present
    and every ``block.N``); the base config's other method options (e.g. ``hidden``) apply to every run.

    ``seeds`` (a count N for seeds 0..N-1, or the seeds; default: the config's seed alone) trains each
    site once per seed; its rows give the accuracy's mean ± sample std over the seeds that finished.
    Runs go to ``<out>/layers/<name>/<site>`` (the config's own seed) and ``<site>-seed<k>`` (the others)
    with ``<name>`` the shape for ``ap`` and ``<method>-<shape>`` otherwise. Writes
    ``<out>/layers-<name>.{md,csv,png}`` (accuracy and cost per site) and returns
    ``{"rows": [...], "failures": [...], "files": {...}}``.

    ``analyze`` (options of :func:`.analyze.layer_features`, ``{}`` for its defaults) adds the layer
    analysis of the base backbone on the evaluation split (CKA, attention distance, receptive field;
    also written to ``<out>/layer-analysis.*``) to the rows, the table and the figure.
    """
    if method not in SITE_METHODS:
        raise ValueError(f"sweep layers moves a site method ({', '.join(SITE_METHODS)}), not {method!r}")
    base = base_config(config, method=method)
    name = layers_name(method, shape)
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(dict.fromkeys(seeds or [base["seed"]]))
    if not seeds:
        raise ValueError("sweep layers needs at least one seed")
    depths = site_depths(base)
    if sites is None:
        sites = [s for s in depths if s == "embed" or s.startswith("block.")]
    unknown = [s for s in sites if s not in depths]
    if unknown:
        raise ValueError(
            f"{base['backbone']} has no site {', '.join(unknown)}; its sites: {', '.join(depths)}"
        )
    sites = sorted(dict.fromkeys(sites), key=lambda s: (depths[s], s))
    check_base({**base, "method_options": {**base["method_options"], "site": sites[0], "shape": shape}})

    def job(site: str, seed: int) -> Job:
        run = f"layers/{name}/{site}" + ("" if seed == base["seed"] else f"-seed{seed}")
        return Job.of(out, run, base, {"site": site, "shape": shape}, seed=seed)

    jobs = [job(site, seed) for site in sites for seed in seeds]
    outcomes = (executor or Executor()).run(jobs)
    totals = account(outcomes)
    write_compute(out, totals)
    rows = [
        _layer_row(site, depths[site], outcomes[i * len(seeds) : (i + 1) * len(seeds)])
        for i, site in enumerate(sites)
    ]
    failed = failures(outcomes)
    write_failures(out, failed)
    if analyze is not None:
        from .analyze import for_sweep

        for_sweep(base, rows, out, **analyze)
    caption = layers_caption(base, seeds)
    files = _write_layers(out, method, shape, rows, caption)
    return {"rows": rows, "failures": failed, "files": files, "compute": totals}


def _layer_row(site: str, depth: int, outcomes: list) -> dict[str, Any]:
    """One site's row: as its run says (one seed), or means over its seeds' finished runs with the
    accuracy's sample std and the number of seeds."""
    summaries = [o.summary for o in outcomes if o.ok and o.summary]
    split = _split(summaries[0] if summaries else None)
    accuracies = [s[f"{split}_accuracy"] for s in summaries if s.get(f"{split}_accuracy") is not None]

    def mean(key: str) -> float | None:
        values = [s[key] for s in summaries if s.get(key) is not None]
        return sum(values) / len(values) if values else None

    statuses = [o.status for o in outcomes]
    row = {"site": site, "depth": depth, "status": "+".join(dict.fromkeys(statuses)), "split": split}
    if len(outcomes) == 1:
        s = summaries[0] if summaries else {}
        row["accuracy"] = accuracies[0] if accuracies else None
        row |= {k: s.get(k) for k in ("trainable_parameters_without_head", "trainable_parameters")}
        row |= {k: s.get(k) for k in ("train_seconds", "peak_memory_mib")}
        return row | {"run": outcomes[0].name}
    if "failed" in statuses:
        row["status"] = f"failed {statuses.count('failed')}/{len(statuses)}"
    mean_acc, std = mean_std(accuracies) if accuracies else (None, None)
    first = summaries[0] if summaries else {}
    row |= {"accuracy": mean_acc, "accuracy_std": std, "seeds": len(accuracies)}
    row |= {k: first.get(k) for k in ("trainable_parameters_without_head", "trainable_parameters")}
    row |= {"train_seconds": mean("train_seconds"), "peak_memory_mib": mean("peak_memory_mib")}
    return row | {"run": " ".join(o.name for o in outcomes)}


def layers_caption(base: dict[str, Any], seeds: list[int] | None = None) -> str:
    """Dataset, backbone, input size and budget of a layer sweep, for its figure."""
    size = f"{base['img_size']} px" if base.get("img_size") else "native size"
    train = f"{base['train_size']} training images" if base.get("train_size") else "all training images"
    seeds = seeds or [base.get("seed", 0)]
    seed = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {','.join(map(str, seeds))}"
    return (
        f"{base['data']} · {base['backbone']} · {size} · {train} · {base.get('epochs')} epochs · "
        f"lr {base.get('lr'):g} · {seed}"
    )


def _write_layers(
    out: str | Path, method: str, shape: str, rows: list[dict], caption: str = ""
) -> dict[str, str]:
    stem = Path(out) / f"layers-{layers_name(method, shape)}"
    headers = list(rows[0])
    write_csv(stem.with_suffix(".csv"), headers, [[r[h] for h in headers] for r in rows])
    seeded = "seeds" in rows[0]  # several seeds per site: mean ± sample std
    columns = dict(LAYER_COLUMNS)
    if seeded:
        at = list(columns).index("accuracy") + 1
        columns = dict([*list(columns.items())[:at], ("seeds", "seeds"), *list(columns.items())[at:]])
    columns |= {k: v for k, v in ANALYSIS_COLUMNS.items() if any(r.get(k) is not None for r in rows)}
    cells = [
        [
            pm(r["accuracy"], r["accuracy_std"], r["seeds"]) if seeded and k == "accuracy" else r.get(k)
            for k in columns
        ]
        for r in rows
    ]
    table = markdown(list(columns.values()), cells)
    files = {"csv": str(stem.with_suffix(".csv")), "md": str(stem.with_suffix(".md"))}
    done = [r for r in rows if r["accuracy"] is not None]
    spread = ", accuracy mean ± sample std over seeds" if seeded else ""
    text = f"# {method.upper()} layer preference (shape {shape}{spread})\n\n{table}"
    if done:
        label = f"{method} {shape}"
        runs = "one run per site" if not seeded else "mean ± sample std over seeds"
        plots.layer_preference(
            {
                label: [
                    (r["site"], r["accuracy"], r.get("accuracy_std") or 0.0, r.get("seeds", 1)) for r in done
                ]
            },
            stem.with_suffix(".png"),
            depths={r["site"]: r["depth"] for r in done},
            caption=caption,
            title=f"Layer preference of {method} ({runs})",
            costs={
                label: [(r["site"], r["trainable_parameters_without_head"], r["train_seconds"]) for r in done]
            },
            ylabel=f"{done[0]['split']} accuracy (%)",
            analysis=analysis_panels(rows),
        )
        files["png"] = str(stem.with_suffix(".png"))
        text += f"\n![layer preference]({stem.name}.png)\n"
    write_text(stem.with_suffix(".md"), text)
    return files


def analysis_panels(rows: list[dict]) -> dict[str, dict[str, list]] | None:
    """The layer analysis in the rows as the figure's lower panels (``None`` when there is none)."""
    panels = {
        "linear CKA": {"CKA with pre_logits": "cka_final", "CKA with the previous site": "cka_previous"},
        "fraction of the image side": {
            "mean attention distance": "attention_distance_fraction",
            "ERF radius, 50% of the gradient": "erf_r50_fraction",
            "ERF radius, 90% of the gradient": "erf_r90_fraction",
        },
    }
    shown = {
        panel: {
            label: [(r["site"], r[k]) for r in rows if r.get(k) is not None] for label, k in lines.items()
        }
        for panel, lines in panels.items()
    }
    shown = {panel: {k: v for k, v in lines.items() if v} for panel, lines in shown.items()}
    shown = {panel: lines for panel, lines in shown.items() if lines}
    return shown or None


#: final runs when neither the call nor a recipe says how many
DEFAULT_SEEDS = 5


def searcher(search: str | Asha | None) -> Asha | None:
    """``"grid"``/None: the exact grid; ``"asha"``: successive halving with ASHA's defaults; an
    :class:`~.search.Asha` as it is. A search needs Optuna (checked here, before any run)."""
    if isinstance(search, str) and search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}; choose one of: {', '.join(SEARCHES)}")
    if search is None or search == "grid":
        return None
    load_optuna()
    return Asha() if search == "asha" else search


def grid(
    base: dict[str, Any],
    lrs: list[float] | None,
    wds: list[float] | None,
    seeds: int | list[int] | None,
) -> tuple[list[float], list[float], int | list[int]]:
    """The grid and seeds: as given, else the recipe's, else the config's lr and weight decay and 5 seeds."""
    tune = recipes.tuning(base.get("recipe"))
    lrs = list(lrs or tune.get("lrs") or [base["lr"]])
    wds = list(wds if wds else tune.get("wds") or [base["weight_decay"]])
    return lrs, wds, seeds if seeds is not None else tune.get("seeds", DEFAULT_SEEDS)


@one_sweep_at_a_time
def tune(
    config: Any,
    out: str | Path,
    *,
    lrs: list[float] | None = None,
    wds: list[float] | None = None,
    seeds: int | list[int] | None = None,
    executor: Executor | None = None,
    search: str | Asha | None = None,
) -> dict[str, Any]:
    """Grid ``lrs × wds`` on the tuning split, pick by validation, run the final runs (``seeds``: a count
    N for seeds 0..N-1, or the seeds). Defaults: the recipe's grid and seeds, else the config's lr and
    weight decay and 5 seeds. ``search="asha"`` (or an :class:`~vprompt.tools.search.Asha`) trains the
    grid by successive halving instead of in full (see :mod:`vprompt.tools.search`).

    Returns the result (also ``<out>/result.{json,md}``): the grid, the chosen point, each final run and
    the test accuracy's mean ± sample std over the seeds.
    """
    base = base_config(config)
    check_base(base, final=True)
    lrs, wds, seeds = grid(base, lrs, wds, seeds)
    plan = Plan(base, Path(out), lrs, wds, seeds, search=searcher(search))
    if plan.search is not None:
        plan.search.check(base)
    result = run_plans([plan], executor)[0]
    write_failures(out, result["failures"])
    return result


# --------------------------------------------------------------------------------------------- suite
@one_sweep_at_a_time
def suite(
    family: str,
    config: Any,
    out: str | Path,
    *,
    datasets: list[str] | None = None,
    lrs: list[float] | None = None,
    wds: list[float] | None = None,
    seeds: int | list[int] | None = None,
    fixed: bool = False,
    executor: Executor | None = None,
    search: str | Asha | None = None,
) -> dict[str, Any]:
    """One method over the datasets of ``family`` (``vtab1k``, ``fgvc``, ``vp``; ``datasets``: a subset).

    With more than one (lr, wd) combination (given, or the recipe's grid) every dataset is tuned
    (:func:`tune`'s protocol); otherwise, or with ``fixed``, each dataset's own lr and weight decay (the
    config's, or the recipe's for that dataset) are used as they are. Writes ``<out>/<dataset>/...`` and
    ``<out>/suite.{md,csv,json}``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown suite {family!r}; choose one of: {', '.join(FAMILIES)}")
    names = list(datasets or FAMILIES[family])
    unknown = [n for n in names if n not in FAMILIES[family]]
    if unknown:
        raise ValueError(
            f"{family} has no dataset {', '.join(unknown)}; its datasets: {', '.join(FAMILIES[family])}"
        )
    bases = [base_config(config, data=f"{family}:{n}") for n in names]  # each with its recipe values
    check_base(bases[0], data=False)  # a missing dataset fails its own runs only
    plans = []
    for n, base in zip(names, bases, strict=True):
        if fixed:
            if lrs is not None or wds is not None:
                raise ValueError("a fixed suite uses each dataset's own lr and weight decay; give no grid")
            point = [base["lr"]], [base["weight_decay"]], grid(base, None, None, seeds)[2]
        else:
            point = grid(base, lrs, wds, seeds)
        tuned = not fixed and len(point[0]) * len(point[1]) > 1
        plans.append(Plan(base, Path(out) / n, *point, tuned, search=searcher(search)))
    tuned = any(p.tuned for p in plans)
    results = run_plans(plans, executor)
    failed = [
        {**f, "run": f"{n}/{f['run']}"} for n, r in zip(names, results, strict=True) for f in r["failures"]
    ]
    write_failures(out, failed)
    summary = {
        "family": family,
        "method": bases[0]["method"],
        "backbone": bases[0]["backbone"],
        "random_init": bool(bases[0].get("random_init")),
        "tuned": tuned,
        "datasets": dict(zip(names, results, strict=True)),
        "means": suite_means(family, names, results),
        "published": {
            n: {"value": p.value, "source": p.source}
            for n, base in zip(names, bases, strict=True)
            if (p := suite_published(family, n, base))
        },
        "failures": failed,
        "compute": combine([r["compute"] for r in results]),
    }
    write_compute(out, summary["compute"])
    runs = [r for r in report.find_runs([out])[0] if r.options.get("data") in {b["data"] for b in bases}]
    _write_suite(
        Path(out), summary, report.header(runs, suite=(family, names)) if runs else "- **No run finished.**\n"
    )
    return summary


def suite_means(family: str, names: list[str], results: list[dict]) -> dict[str, dict]:
    """The suite's means (:func:`.benchmarks.means`): each only over a complete set of the family's tasks
    (VTAB-1k: each group, the 19 tasks, the 3 group means), else ``None`` with how many had a result."""
    acc = {n: r["test_accuracy"]["mean"] for n, r in zip(names, results, strict=True) if r["test_accuracy"]}
    return benchmarks.means(family, acc)


def suite_published(family: str, name: str, base: dict[str, Any]) -> benchmarks.Published | None:
    """The published number for the suite's backbone and method on ``name``, if there is one."""
    return benchmarks.find_published(
        base["backbone"], base["method"], f"{family}:{name}", random_init=bool(base.get("random_init"))
    )


def _write_suite(out: Path, summary: dict[str, Any], header: str = "") -> None:
    headers = [
        "dataset",
        "lr",
        "weight_decay",
        "test_accuracy_mean",
        "test_accuracy_std",
        "seeds",
        "trainable_parameters",
        "trainable_parameters_without_head",
        "failures",
        "published",
    ]
    published = summary.get("published") or {}
    rows = []
    for name, r in summary["datasets"].items():
        t, c = r["test_accuracy"] or {}, r["chosen"] or {}
        rows.append(
            [
                name,
                c.get("lr"),
                c.get("weight_decay"),
                t.get("mean"),
                t.get("std"),
                t.get("n", 0),
                r["trainable_parameters"],
                r["trainable_parameters_without_head"],
                len(r["failures"]),
                (published.get(name) or {}).get("value"),
            ]
        )
    write_csv(out / "suite.csv", headers, rows)
    write_json(out / "suite.json", summary)
    shown = bool(published)  # the published column only when some dataset has a published number
    md = [
        [r[0], _g(r[1]), _g(r[2]), pm(r[3], r[4], r[5])]
        + ([f"{r[9]:.2f}" if r[9] is not None else "–"] if shown else [])
        + [r[5], r[6], r[8]]
        for r in rows
    ]
    family = summary["family"]
    if shown:
        values = {n: p["value"] for n, p in published.items()}
        published_means = benchmarks.means(family, values)
    for key, m in summary["means"].items():
        cells = [f"**{m['label']}**", None, None, benchmarks.mean_cell(m)]
        cells += [benchmarks.mean_cell(published_means[key])] if shown else []
        md.append(cells + [None, None, None])
    how = "tuned on validation, then" if summary["tuned"] else "fixed hyper-parameters,"
    have = summary["means"]["all"]
    noun = "tasks" if family == "vtab1k" else "datasets"
    title = (
        f"# Suite {family}: {summary.get('method')} on {summary.get('backbone')}, "
        f"{have['have']} of {have['of']} {noun}"
    )
    columns = ["dataset", "lr", "weight decay", "test accuracy (%)"]
    columns += ["published (%)"] if shown else []
    columns += ["seeds", "trainable params", "failed runs"]
    text = f"{title}\n\n{header}\n{how} test accuracy (%) mean ± std over seeds. " + (
        "Each mean only over a complete set of the suite's tasks; otherwise `incomplete (k of n)`.\n\n"
    )
    text += markdown(columns, md)
    if shown:
        sources = sorted({p["source"] for p in published.values()})
        text += (
            f"\nPublished: {'; '.join(sources)} — the same backbone, method and task "
            "(`vprompt/tools/published.yaml`); their means are computed from the published per-task values.\n"
        )
    write_text(out / "suite.md", text)
