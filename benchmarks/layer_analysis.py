"""Spearman rank correlation between a layer sweep's accuracy per site and each layer-analysis quantity.

Reads ``<sweep>/layers-<shape>.csv`` of ``vprompt sweep layers ... [--seeds N] --analyze`` and every
run's ``summary.json`` (one per site and seed), and prints markdown: the accuracy per site and seed with
its mean and sample std, then per quantity Spearman's rho between the quantity and the sites' mean
accuracy, a two-sided permutation p-value (the sites' mean accuracies shuffled; exact when the sites'
permutations are no more than --resamples), rho within each seed, and three 95% bootstrap intervals:
seeds resampled (the seed noise alone), sites and then seeds resampled (two-level), and the two-level
interval of rho minus depth's rho on the same resamples (does the quantity follow the preference
better than depth?). When every site ran the same seeds, seed k is the same training subset, head
initialisation and order for every site, so seeds are resampled jointly (paired); else within sites.
The sites of one network are not independent samples; read the site resampling as how much rho
depends on single sites. The evaluation images are the same for every site and seed, so their
sampling noise is not in the intervals (--binomial N prints its standard error). --summary prints one
row per sweep instead.

    python benchmarks/layer_analysis.py SWEEP [SWEEP ...] [--shape full] [--resamples 10000] [--binomial N]
    python benchmarks/layer_analysis.py SWEEP [SWEEP ...] --summary
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

QUANTITIES = {
    "cka_final": "linear CKA with pre_logits",
    "cka_previous": "linear CKA with the previous site",
    "attention_distance_fraction": "mean attention distance / image side",
    "erf_r50_fraction": "ERF radius (50% of the gradient) / image side",
    "erf_r90_fraction": "ERF radius (90% of the gradient) / image side",
    "depth": "depth (site index)",
}
SHORT = {
    "cka_final": "CKA→pre_logits",
    "cka_previous": "CKA→previous",
    "attention_distance_fraction": "attn dist / image",
    "erf_r50_fraction": "ERF r50 / image",
    "erf_r90_fraction": "ERF r90 / image",
}


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis with ties averaged (1-based)."""
    return rankdata(np.asarray(values, dtype=float), method="average", axis=-1)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Spearman's rho of ``x`` and ``y`` along the last axis (rows of a 2-D array are separate samples):
    Pearson's correlation of the tie-averaged ranks; NaN where either side has a single value."""
    rx, ry = ranks(x), ranks(y)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (rx * ry).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)
    return float(rho) if np.ndim(rho) == 0 else rho


def permutation_p(x: np.ndarray, y: np.ndarray, resamples: int, rng: np.random.Generator) -> float:
    """Two-sided p of Spearman's rho under shuffling ``y`` against ``x``: every permutation when there
    are at most ``resamples`` of them (the exact p), else ``resamples`` random ones ((k + 1) / (R + 1))."""
    rho = spearman(x, y)
    n = len(y)
    if math.factorial(n) <= resamples:
        shuffled = np.array([y[list(p)] for p in itertools.permutations(range(n))])
        null = spearman(np.broadcast_to(x, shuffled.shape), shuffled)
        return float(np.mean(np.abs(null) >= abs(rho) - 1e-12))
    shuffled = np.array([rng.permutation(y) for _ in range(resamples)])
    null = spearman(np.broadcast_to(x, shuffled.shape), shuffled)
    return float((np.sum(np.abs(null) >= abs(rho) - 1e-12) + 1) / (resamples + 1))


def _seed_means(
    samples: list[np.ndarray], sites: np.ndarray, rng: np.random.Generator, paired: bool
) -> np.ndarray:
    """Per resample (row of ``sites``) and drawn site: the mean of that site's seeds drawn with
    replacement. ``paired``: one draw of seed positions per resample, the same for every site (the
    k-th accuracy of every site comes from the same seed, i.e. the same training images)."""
    if paired:
        table = np.stack(samples)  # (sites, seeds)
        k = table.shape[1]
        draws = rng.integers(0, k, (sites.shape[0], k))
        # resample r, drawn site j: mean over the drawn seed positions of that site's row
        return table[sites[:, :, None], draws[:, None, :]].mean(axis=2)
    means = np.empty(sites.shape)
    for j in range(sites.shape[1]):
        for i in np.unique(sites[:, j]):
            rows = sites[:, j] == i
            values = samples[i]
            draws = values[rng.integers(0, len(values), (int(rows.sum()), len(values)))]
            means[rows, j] = draws.mean(axis=1)
    return means


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def correlate(
    x: np.ndarray,
    samples: list[np.ndarray],
    resamples: int = 10000,
    seed: int = 0,
    reference: np.ndarray | None = None,
    paired: bool = False,
) -> dict:
    """Spearman's rho between the quantity ``x`` (one value per site) and the sites' mean accuracy
    (``samples[i]``: site i's accuracy per seed), with its permutation p and 95% bootstrap intervals.

    ``seeds``: sites kept, each site's seeds resampled with replacement. ``two_level``: sites resampled
    with replacement, then each drawn site's seeds. ``versus_reference``: rho(x) − rho(reference) on the
    same two-level resamples (``reference``, e.g. depth, one value per site). ``paired``: the k-th
    accuracy of every site comes from the same seed, so seeds are resampled jointly across sites (a
    seed's shared offset then cancels in the ranks), and ``per_seed`` gives rho within each seed."""
    x = np.asarray(x, dtype=float)
    samples = [np.asarray(s, dtype=float) for s in samples]
    if len(x) != len(samples) or any(len(s) == 0 for s in samples):
        raise ValueError("one quantity value and at least one accuracy per site are needed")
    if paired and len({len(s) for s in samples}) != 1:
        raise ValueError("paired seeds need the same number of accuracies per site")
    rng = np.random.default_rng(seed)
    n = len(x)
    means = np.array([s.mean() for s in samples])
    rho = spearman(x, means)
    p = permutation_p(x, means, resamples, rng)
    fixed = np.broadcast_to(np.arange(n), (resamples, n))
    seed_rho = spearman(np.broadcast_to(x, fixed.shape), _seed_means(samples, fixed, rng, paired))
    picked = rng.integers(0, n, (resamples, n))
    two_means = _seed_means(samples, picked, rng, paired)
    two_rho = spearman(x[picked], two_means)
    out = {
        "n": n,
        "seeds": [len(s) for s in samples],
        "rho": rho,
        "p": p,
        "seeds_interval": _interval(seed_rho),
        "two_level_interval": _interval(two_rho),
        "undefined_resamples": int(np.isnan(two_rho).sum()),
    }
    if paired:
        out["per_seed"] = [spearman(x, column) for column in np.stack(samples).T]
    if reference is not None:
        reference = np.asarray(reference, dtype=float)
        out["reference_rho"] = spearman(reference, means)
        out["versus_reference"] = _interval(two_rho - spearman(reference[picked], two_means))
    return out


def load_sweep(folder: Path, shape: str = "full") -> list[dict]:
    """The sweep's rows (``layers-<shape>.csv``), each with ``samples``: the accuracy of every finished
    run of the site (read from the runs' ``summary.json``; the CSV's mean when no summary is there)."""
    folder = Path(folder)
    with open(folder / f"layers-{shape}.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("accuracy")]
    for row in rows:
        split = row.get("split") or "val"
        values, seeds = [], []
        for run in (row.get("run") or "").split():
            summary = folder / run / "summary.json"
            if summary.is_file():
                record = json.loads(summary.read_text())
                if record.get(f"{split}_accuracy") is not None:
                    values.append(float(record[f"{split}_accuracy"]))
                    seeds.append(record.get("seed"))
        if values and None not in seeds:
            order = np.argsort(seeds, kind="stable")
            values, seeds = [values[i] for i in order], [seeds[i] for i in order]
        row["samples"] = np.array(values or [float(row["accuracy"])])
        row["seed_ids"] = seeds or [None]
    return rows


def binomial_se(accuracy_pct: float, n: int) -> float:
    """Binomial standard error (points) of an accuracy measured on ``n`` images."""
    p = accuracy_pct / 100
    return 100 * math.sqrt(p * (1 - p) / n)


def report(folder: Path, shape: str = "full", resamples: int = 10000, eval_images: int | None = None) -> str:
    rows = load_sweep(folder, shape)
    lines = [f"### {folder}", ""]
    width = max(len(r["samples"]) for r in rows)
    ids = next((r["seed_ids"] for r in rows if len(r["samples"]) == width), [None] * width)
    shown = [k for k in SHORT if any(r.get(k) for r in rows)]
    head = ["site", "depth", *[f"seed {s}" if s is not None else "run" for s in ids], "mean ± std"]
    head += [SHORT[k] for k in shown]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["samples"]
        std = f" ± {s.std(ddof=1):.2f}" if len(s) > 1 else ""
        cells = [
            r["site"],
            r["depth"],
            *[f"{v:.2f}" for v in s],
            *[""] * (width - len(s)),
            f"{s.mean():.2f}{std}",
        ]
        cells += [f"{float(r[k]):.3f}" if r.get(k) else "–" for k in shown]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    paired = width > 1 and None not in ids and all(r["seed_ids"] == ids for r in rows)
    if paired:
        table = np.stack([r["samples"] for r in rows])
        spans = ", ".join(f"seed {s} {table[:, k].max() - table[:, k].min():.2f}" for k, s in enumerate(ids))
        lines += ["", f"Spread between the sites within one seed (max − min, points): {spans}."]
    if eval_images:
        mean = float(np.mean([r["samples"].mean() for r in rows]))
        lines += [
            "",
            f"Binomial standard error of one accuracy near {mean:.1f}% on {eval_images} images: "
            f"{binomial_se(mean, eval_images):.2f} points.",
        ]
    seeds_how = "jointly" if paired else "within sites"
    lines += [
        "",
        "| quantity | sites | Spearman ρ (means) | permutation p | "
        + ("ρ per seed | " if paired else "")
        + f"95% CI, seeds resampled {seeds_how} | 95% CI, sites + seeds resampled | ρ − ρ(depth), 95% CI |",
        "|---|---|---|---|" + ("---|" if paired else "") + "---|---|---|",
    ]
    for key, label in QUANTITIES.items():
        have = [r for r in rows if r.get(key) not in (None, "")]
        if len(have) < 3:
            continue
        x = np.array([float(r[key]) for r in have])
        depth = np.array([float(r["depth"]) for r in have])
        reference = None if key == "depth" else depth
        c = correlate(x, [r["samples"] for r in have], resamples, reference=reference, paired=paired)
        versus = "–" if key == "depth" else "[{:+.2f}, {:+.2f}]".format(*c["versus_reference"])
        per_seed = " ".join(f"{v:+.2f}" for v in c["per_seed"]) + " | " if paired else ""
        lines.append(
            f"| {label} | {c['n']} | {c['rho']:+.2f} | {c['p']:.3g} | {per_seed}"
            "[{:+.2f}, {:+.2f}] | [{:+.2f}, {:+.2f}] | ".format(
                *c["seeds_interval"], *c["two_level_interval"]
            )
            + f"{versus} |"
        )
    return "\n".join(lines)


def summary(folders: list[Path], shape: str = "full", resamples: int = 10000) -> str:
    """One row per sweep: its sites, the range of the sites' mean accuracy, and per quantity
    "rho (permutation p) [two-level 95% interval]" on the site means."""
    cells, keys = [], [k for k in QUANTITIES]
    for folder in folders:
        rows = load_sweep(folder, shape)
        means = [r["samples"].mean() for r in rows]
        ids = rows[0]["seed_ids"]
        paired = len(ids) > 1 and None not in ids and all(r["seed_ids"] == ids for r in rows)
        row = [str(folder), str(len(rows)), f"{min(means):.2f}–{max(means):.2f}"]
        for key in keys:
            have = [r for r in rows if r.get(key) not in (None, "")]
            if len(have) < 3:
                row.append("–")
                continue
            x = np.array([float(r[key]) for r in have])
            c = correlate(x, [r["samples"] for r in have], resamples, paired=paired)
            row.append(
                "{:+.2f} (p {:.2g}) [{:+.2f}, {:+.2f}]".format(c["rho"], c["p"], *c["two_level_interval"])
            )
        cells.append(row)
    head = ["sweep", "sites", "mean accuracy (%)", *[SHORT.get(k, "depth") for k in keys]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+")
    parser.add_argument("--shape", default="full")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument(
        "--binomial",
        type=int,
        default=None,
        metavar="N",
        help="evaluation images per run: print the binomial standard error of one accuracy",
    )
    parser.add_argument("--summary", action="store_true", help="one row per sweep instead")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.sweeps, args.shape, args.resamples))
        return
    print("\n\n".join(report(f, args.shape, args.resamples, args.binomial) for f in args.sweeps))


if __name__ == "__main__":
    main()
