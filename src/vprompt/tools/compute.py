"""A sweep's compute: what its runs spent and what the savings spared (divergence stop, shared caches,
an early-stopping search), from each run's ``compute`` record; written to ``<out>/compute.json``.

Spent figures are measured (run-seconds: training, cache builds and evaluation; images through
forward+backward and through evaluation). Saved figures count what was not done: epochs not trained
after a divergence or a search's stop, cache builds not repeated; their seconds are estimates (the
run's own seconds per epoch, the sweep's mean seconds per cache build).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.rundir import write_json
from .executors import Outcome
from .tables import markdown

COMPUTE = "compute.json"


def account(outcomes: list[Outcome]) -> dict[str, Any]:
    """Sums over the runs of ``outcomes`` (those with a ``compute`` record; reused runs count what they
    spent when they ran)."""
    spent = dict.fromkeys(("run_seconds", "images_trained", "images_evaluated", "cache_images"), 0.0)
    saved = dict.fromkeys(
        (
            "epochs_skipped_diverged",
            "epochs_skipped_search",
            "cache_builds_saved",
            "cache_images_saved",
            "images_trained_saved",
            "run_seconds_saved_estimate",
        ),
        0.0,
    )
    runs = {"runs": 0, "diverged": 0, "stopped_by_search": 0, "caches_built": 0}
    for o in outcomes:
        s = o.summary or {}
        c = s.get("compute")
        if not c:
            continue
        runs["runs"] += 1
        spent["run_seconds"] += c["seconds"]
        spent["images_trained"] += c["images_trained"]
        spent["images_evaluated"] += c["images_evaluated"]
        spent["cache_images"] += c["cache_images"]
        runs["caches_built"] += c["caches_built"]
        saved["cache_builds_saved"] += c["caches_reused"]
        saved["cache_images_saved"] += c["cache_images_saved"]
        skipped = c["epochs_skipped_diverged"]
        if s.get("diverged"):
            runs["diverged"] += 1
        if o.status == "stopped":
            runs["stopped_by_search"] += 1
            skipped = s["search_stopped"]["epochs_skipped"]
            saved["epochs_skipped_search"] += skipped
        else:
            saved["epochs_skipped_diverged"] += skipped
        if skipped:
            epoch_seconds = (c["seconds"] - c["cache_seconds"]) / max(c["epochs_run"], 1e-9)
            saved["images_trained_saved"] += skipped * c["train_images_per_epoch"]
            saved["run_seconds_saved_estimate"] += skipped * epoch_seconds
    builds = runs["caches_built"]
    mean_build = sum((o.summary or {}).get("compute", {}).get("cache_seconds", 0.0) for o in outcomes) / max(
        builds, 1
    )
    saved["run_seconds_saved_estimate"] += saved["cache_builds_saved"] * mean_build
    return {"runs": runs, "spent": spent, "saved": saved}


def compute_markdown(totals: dict[str, Any]) -> str:
    """The accounting as a short markdown section."""
    s, v, r = totals["spent"], totals["saved"], totals["runs"]
    rows = [
        ["run-seconds", f"{s['run_seconds']:.1f}", f"≈{v['run_seconds_saved_estimate']:.1f} (estimate)"],
        ["images forward+backward", f"{s['images_trained']:.0f}", f"{v['images_trained_saved']:.0f}"],
        ["images evaluated", f"{s['images_evaluated']:.0f}", ""],
        ["images through a cached prefix", f"{s['cache_images']:.0f}", f"{v['cache_images_saved']:.0f}"],
        ["cache builds", f"{r['caches_built']}", f"{v['cache_builds_saved']:.0f}"],
        ["epochs skipped: divergence stop", "", f"{v['epochs_skipped_diverged']:.2f}"],
        ["epochs skipped: search stopped", "", f"{v['epochs_skipped_search']:.2f}"],
    ]
    head = (
        f"## Compute\n\n{r['runs']} runs ({r['diverged']} diverged, {r['stopped_by_search']} stopped by the "
        "search).\n\n"
    )
    return head + markdown(["", "spent", "saved"], rows)


def compute_line(totals: dict[str, Any]) -> str:
    """One line for the sweep's log."""
    s, v = totals["spent"], totals["saved"]
    return (
        f"compute: {s['run_seconds']:.1f} run-s, {s['images_trained']:.0f} images fwd+bwd, "
        f"{s['images_evaluated']:.0f} evaluated; saved ≈{v['run_seconds_saved_estimate']:.1f} run-s, "
        f"{v['images_trained_saved']:.0f} images fwd+bwd, {v['cache_builds_saved']:.0f} cache builds, "
        f"{v['epochs_skipped_diverged']:.2f} epochs (divergence) + {v['epochs_skipped_search']:.2f} (search)"
    )


def write_compute(out: str | Path, totals: dict[str, Any]) -> None:
    write_json(Path(out) / COMPUTE, totals)


def combine(totals: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several accountings (a suite's datasets)."""
    keys = ("runs", "spent", "saved")
    return {k: {f: sum(t[k][f] for t in totals) for f in totals[0][k]} for k in keys} if totals else {}
