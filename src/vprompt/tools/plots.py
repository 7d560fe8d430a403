"""Plots for sweeps and reports (matplotlib, drawn off-screen with the Agg canvas; PNG files).

- :func:`layer_preference`: accuracy per site in depth order, one line per series, optionally with a
  second panel of what each site costs (trainable parameters, train time).
- :func:`tradeoffs`: accuracy against cost (trainable parameters, train time, peak memory), one point per
  configuration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_ORDER = {"input": 0, "embed": 1, "pre_logits": 4}


def site_order(site: str) -> tuple[int, int, str]:
    """A key that sorts site names in forward order: input, embed, block.N / stage.N by N, pre_logits."""
    if site in _ORDER:
        return (_ORDER[site], 0, site)
    match = re.fullmatch(r"(block|stage)\.(\d+)", site)
    if match:
        return (2 if match[1] == "block" else 3, int(match[2]), site)
    return (5, 0, site)


def _figure(panels: int, width: float = 6.4) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * panels if panels > 1 else width, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def layer_preference(
    series: Mapping[str, Sequence[tuple[str, float, float]]],
    path: str | Path,
    costs: Mapping[str, Sequence[tuple[str, float, float]]] | None = None,
    ylabel: str = "accuracy (%)",
    title: str = "Layer preference of activation prompts",
) -> Path:
    """Plot ``series`` (label → ``[(site, mean, std), ...]``) against site depth; save to ``path``.

    ``costs`` (label → ``[(site, trainable parameters, train seconds), ...]``) adds a cost panel.
    """
    sites = sorted({s for points in series.values() for s, *_ in points}, key=site_order)
    x = {s: i for i, s in enumerate(sites)}
    fig, axes = _figure(2 if costs else 1)
    ax = axes[0]
    for label, points in series.items():
        points = sorted(points, key=lambda p: site_order(p[0]))
        ax.errorbar(
            [x[s] for s, *_ in points],
            [m for _, m, _ in points],
            yerr=[e for *_, e in points],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set(xlabel="site (input → output)", ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    for a in axes:
        a.set_xticks(range(len(sites)), sites, rotation=60, ha="right", fontsize="small")
        a.grid(alpha=0.3)
    if costs:
        params_ax = axes[1]
        time_ax = params_ax.twinx()
        for label, points in costs.items():
            points = sorted(points, key=lambda p: site_order(p[0]))
            xs = [x[s] for s, *_ in points]
            params_ax.plot(xs, [p for _, p, _ in points], marker="s", label=f"{label}: parameters")
            time_ax.plot(
                xs, [t for *_, t in points], marker="^", linestyle="--", label=f"{label}: train time"
            )
        params_ax.set(ylabel="trainable parameters (without head)", title="Cost per site")
        time_ax.set_ylabel("train time (s)")
        handles = params_ax.get_legend_handles_labels()[0] + time_ax.get_legend_handles_labels()[0]
        params_ax.legend(handles=handles, fontsize="small")
    return _save(fig, path)


#: x axes :func:`tradeoffs` knows: summary key → (axis label, log scale)
AXES = {
    "trainable_parameters": ("trainable parameters (with head)", True),
    "train_seconds": ("train time (s)", False),
    "peak_memory_mib": ("peak memory (MiB)", False),
}


def tradeoffs(points: Sequence[Mapping], keys: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Accuracy (``point["accuracy"]``) against each of ``keys`` (see :data:`AXES`), labelled points."""
    fig, axes = _figure(len(keys), width=5.6)
    for ax, key in zip(axes, keys, strict=True):
        label, log = AXES[key]
        shown = [p for p in points if p.get(key) is not None and p.get("accuracy") is not None]
        for p in shown:
            ax.scatter(p[key], p["accuracy"])
            ax.annotate(
                p["label"],
                (p[key], p["accuracy"]),
                fontsize="x-small",
                xytext=(3, 3),
                textcoords="offset points",
            )
        if log and shown and all(p[key] > 0 for p in shown):
            ax.set_xscale("log")
        ax.set(xlabel=label, ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
