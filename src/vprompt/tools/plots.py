"""Plots for sweeps and reports (matplotlib, drawn off-screen with the Agg canvas), made for a paper.

- :func:`layer_preference`: accuracy per site, sites placed by their depth in the network, one line per
  series with its seed spread (error bars: sample std) and n, reference lines (a linear probe), and
  optionally a second panel of what each site costs (trainable parameters, train time).
- :func:`tradeoffs`: accuracy (± std) against cost (trainable parameters, train time, peak memory), one
  point per configuration; a panel with nothing to compare says so.

Every plot takes a ``caption`` (dataset, backbone, input size, budget), ``formats`` (``png``, ``pdf``,
``svg``: one file each) and ``size`` (inches per panel). Accuracy axes span at least
:data:`MIN_ACCURACY_SPAN` points, so a 2-point spread on 100 images does not fill the figure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_ORDER = {"input": 0, "embed": 1, "pre_logits": 4}
#: file formats a figure can be written in
FORMATS = ("png", "pdf", "svg")
#: width × height of one panel, inches
PANEL = (6.4, 4.2)
#: the smallest accuracy range (percentage points) an accuracy axis shows
MIN_ACCURACY_SPAN = 10.0


def site_order(site: str) -> tuple[int, int, str]:
    """A key that sorts site names in forward order: input, embed, block.N / stage.N by N, pre_logits."""
    if site in _ORDER:
        return (_ORDER[site], 0, site)
    match = re.fullmatch(r"(block|stage)\.(\d+)", site)
    if match:
        return (2 if match[1] == "block" else 3, int(match[2]), site)
    return (5, 0, site)


def site_depths(sites: Sequence[str]) -> dict[str, float]:
    """x positions by depth: ``input`` 0, ``embed`` 1, ``block.N`` / ``stage.N`` N + 2 (when the sites use
    one numbering), ``pre_logits`` after the last; otherwise evenly spaced in forward order."""
    kinds = {m[1] for s in sites if (m := re.fullmatch(r"(block|stage)\.(\d+)", s))}
    known = all(s in _ORDER or re.fullmatch(r"(block|stage)\.\d+", s) for s in sites)
    if len(kinds) > 1 or not known:
        return {s: float(i) for i, s in enumerate(sorted(sites, key=site_order))}
    depth = {s: float(int(s.split(".")[1]) + 2) for s in sites if "." in s}
    depth |= {s: float(_ORDER[s]) for s in sites if s in ("input", "embed")}
    if "pre_logits" in sites:
        depth["pre_logits"] = max(depth.values(), default=0.0) + 1
    return depth


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    wrong = [f for f in formats if f not in FORMATS]
    if wrong or not formats:
        raise ValueError(
            f"plot formats must be among {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}"
        )
    return tuple(dict.fromkeys(formats))


def _figure(panels: int, size: tuple[float, float] | None = None) -> tuple[Figure, list]:
    width, height = size or PANEL
    fig = Figure(figsize=(width * panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def accuracy_range(ax, low: float, high: float) -> None:
    """Accuracy limits around ``[low, high]`` with a margin, at least :data:`MIN_ACCURACY_SPAN` wide,
    within 0–100."""
    span = max(high - low, MIN_ACCURACY_SPAN)
    middle = (low + high) / 2
    bottom, top = middle - 0.6 * span, middle + 0.6 * span
    if bottom < 0:
        bottom, top = 0.0, top - bottom
    if top > 100:
        bottom, top = max(0.0, bottom - (top - 100)), 100.0
    pad = 0.02 * (top - bottom)  # a line at 0 or 100 % stays visible inside the frame
    ax.set_ylim(bottom - pad if bottom == 0 else bottom, top + pad if top == 100 else top)


def _n_text(ns: Sequence[int]) -> str:
    ns = sorted(set(ns))
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def layer_preference(
    series: Mapping[str, Sequence[tuple]],
    path: str | Path,
    costs: Mapping[str, Sequence[tuple[str, float, float]]] | None = None,
    ylabel: str = "accuracy (%)",
    title: str = "Layer preference of activation prompts",
    *,
    depths: Mapping[str, float] | None = None,
    references: Mapping[str, tuple[float, float | None]] | None = None,
    caption: str = "",
    formats: Sequence[str] = ("png",),
    size: tuple[float, float] | None = None,
    analysis: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]] | None = None,
) -> Path:
    """Plot ``series`` (label → ``[(site, mean, std[, n]), ...]``) against site depth; save to ``path``.

    ``depths`` (site → x) places the sites (default :func:`site_depths`); ``references`` (label →
    ``(mean, std)``) draws horizontal lines (a linear probe); ``costs`` (label → ``[(site, trainable
    parameters, train seconds), ...]``) adds a cost panel. ``analysis`` (panel y label → label →
    ``[(site, value), ...]``, e.g. from :mod:`.analyze`) adds a row of panels under them, on the same x
    positions. Returns the first file written.
    """
    formats = check_formats(formats)
    sites = sorted({p[0] for points in series.values() for p in points}, key=site_order)
    x = dict(depths) if depths else site_depths(sites)
    fig, axes = _figure(2 if costs else 1, size)
    if analysis:
        fig, axes, below = _with_row_below(len(axes), len(analysis), size)
    ax = axes[0]
    low, high = [], []
    for label, points in series.items():
        points = sorted(points, key=lambda p: site_order(p[0]))
        means = [p[1] for p in points]
        stds = [p[2] or 0.0 for p in points]
        ns = [p[3] for p in points if len(p) > 3]
        ax.errorbar(
            [x[p[0]] for p in points],
            means,
            yerr=stds,
            marker="o",
            capsize=3,
            label=f"{label} ({_n_text(ns)}{', ± std' if max(ns) > 1 else ''})" if ns else label,
        )
        low += [m - e for m, e in zip(means, stds, strict=True)]
        high += [m + e for m, e in zip(means, stds, strict=True)]
    for i, (label, (mean, std)) in enumerate((references or {}).items()):
        colour = ("0.35", "tab:gray", "k")[i % 3]
        ax.axhline(mean, color=colour, linestyle="--", linewidth=1, label=label)
        if std:
            ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
        low.append(mean - (std or 0))
        high.append(mean + (std or 0))
    if low:
        accuracy_range(ax, min(low), max(high))
    ax.set(xlabel="site (input → output, placed by depth)", ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    for a in axes:
        a.set_xticks([x[s] for s in sites], sites, rotation=60, ha="right", fontsize="small")
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
        params_ax.set_ylim(bottom=0)
        time_ax.set_ylim(bottom=0)
        time_ax.set_ylabel("train time (s)")
        handles = params_ax.get_legend_handles_labels()[0] + time_ax.get_legend_handles_labels()[0]
        params_ax.legend(handles=handles, fontsize="small")
    if analysis:
        for a, (panel, lines) in zip(below, analysis.items(), strict=True):
            for i, (label, points) in enumerate(lines.items()):
                points = sorted((p for p in points if p[1] is not None), key=lambda p: site_order(p[0]))
                style = ("-", "--", ":", "-.")[i % 4]
                a.plot(
                    [x[p[0]] for p in points],
                    [p[1] for p in points],
                    marker=".",
                    linestyle=style,
                    label=label,
                )
            a.set(xlabel="site (input → output, placed by depth)", ylabel=panel)
            top = max((v for points in lines.values() for _, v in points if v is not None), default=1.0)
            a.set_ylim(0, 1.05 * max(1.0, top))  # CKA and fractions of the image: 0–1 unless more
            a.set_xticks([x[s] for s in sites], sites, rotation=60, ha="right", fontsize="small")
            a.grid(alpha=0.3)
            a.legend(fontsize="small")
    if caption:
        fig.suptitle(caption, fontsize="medium")
    return _save(fig, path, formats)


def _with_row_below(top: int, bottom: int, size: tuple[float, float] | None) -> tuple[Figure, list, list]:
    """A figure of two rows: ``top`` panels, and ``bottom`` panels under them sharing their x axis."""
    width, height = size or PANEL
    columns = max(top, bottom)
    fig = Figure(figsize=(width * columns, height * 2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(2, columns, i + 1) for i in range(top)]
    below = [fig.add_subplot(2, columns, columns + i + 1, sharex=axes[0]) for i in range(bottom)]
    return fig, axes, below


#: x axes :func:`tradeoffs` knows: summary key → (axis label, log scale)
AXES = {
    "trainable_parameters": ("trainable parameters (with head)", True),
    "train_seconds": ("train time (s)", False),
    "peak_memory_mib": ("peak memory (MiB)", False),
}


def tradeoffs(
    points: Sequence[Mapping],
    keys: Sequence[str],
    path: str | Path,
    title: str = "",
    *,
    formats: Sequence[str] = ("png",),
    size: tuple[float, float] | None = None,
) -> Path:
    """Accuracy (``point["accuracy"]``, ± ``accuracy_std``, ``n``) against each of ``keys`` (see
    :data:`AXES`), labelled points. A panel with fewer than two points says why instead of plotting."""
    formats = check_formats(formats)
    fig, axes = _figure(len(keys), size or (5.6, PANEL[1]))
    colour = {p["label"]: f"C{i % 10}" for i, p in enumerate(points)}
    for ax, key in zip(axes, keys, strict=True):
        label, log = AXES[key]
        shown = [p for p in points if p.get(key) is not None and p.get("accuracy") is not None]
        ax.set(xlabel=label, ylabel="accuracy (%)")
        if len(shown) < 2:
            why = (
                f"no configuration records its {label}"
                if not shown
                else f"one configuration only ({shown[0]['label']}: {shown[0]['accuracy']:.1f}%):\n"
                "nothing to compare"
            )
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize="small")
            ax.set_xticks([]), ax.set_yticks([])
            continue
        for p in shown:
            std = p.get("accuracy_std") or 0.0
            n = f" (n={p['n']})" if p.get("n") else ""
            ax.errorbar(
                p[key],
                p["accuracy"],
                yerr=std,
                marker="o",
                capsize=3,
                color=colour[p["label"]],
                label=p["label"] + n,
            )
        values = [p[key] for p in shown]
        if log and min(values) > 0 and max(values) >= 10 * min(values):  # log only over decades
            ax.set_xscale("log")
            ax.margins(x=0.1)
        else:
            # time and memory from zero (small differences stay small), with room for the last point
            ax.set_xlim(0, 1.08 * max(p[key] for p in shown) or 1.0)
        accuracy_range(
            ax,
            min(p["accuracy"] - (p.get("accuracy_std") or 0) for p in shown),
            max(p["accuracy"] + (p.get("accuracy_std") or 0) for p in shown),
        )
        ax.grid(alpha=0.3)
    handles: dict[str, object] = {}
    for ax in axes:  # one legend for all panels (the same colour is the same configuration)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=min(3, len(handles)),
            fontsize="x-small",
        )
    if title:
        fig.suptitle(title, fontsize="medium")
    return _save(fig, path, formats)


def _save(fig: Figure, path: str | Path, formats: Sequence[str] = ("png",)) -> Path:
    """Write the figure once per format (``path`` with each suffix); returns the first file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    # text stays text in SVG and PDF (TrueType), so a figure can be edited and searched
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        for fmt in formats:
            target = path.with_suffix(f".{fmt}")
            fig.savefig(target, dpi=150 if fmt == "png" else None)
            written.append(target)
    return written[0]
