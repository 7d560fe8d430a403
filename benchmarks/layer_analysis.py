"""Spearman rank correlation between a layer sweep's accuracy per site and each layer-analysis quantity.

Reads ``<sweep>/layers-<shape>.csv`` of ``vprompt sweep layers ... --analyze`` and prints a markdown
table: per quantity, Spearman's rho over the sites, a two-sided permutation p-value (the sites' accuracy
order shuffled) and a 95% bootstrap interval (sites resampled with replacement). The sites of one
network are not independent samples; read the interval as how much the rho depends on single sites.

    python benchmarks/layer_analysis.py SWEEP_FOLDER [--shape full] [--resamples 10000]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

QUANTITIES = {
    "cka_final": "linear CKA with pre_logits",
    "cka_previous": "linear CKA with the previous site",
    "attention_distance_fraction": "mean attention distance / image side",
    "erf_r50_fraction": "ERF radius (50% of the gradient) / image side",
    "erf_r90_fraction": "ERF radius (90% of the gradient) / image side",
    "depth": "depth (site index)",
}


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (1-based)."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def correlate(x: np.ndarray, y: np.ndarray, resamples: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rho = spearman(x, y)
    null = np.array([spearman(x, rng.permutation(y)) for _ in range(resamples)])
    p = float((np.sum(np.abs(null) >= abs(rho) - 1e-12) + 1) / (resamples + 1))
    boot = []
    for _ in range(resamples):
        pick = rng.integers(0, len(x), len(x))
        value = spearman(x[pick], y[pick])
        if not np.isnan(value):
            boot.append(value)
    low, high = np.percentile(boot, [2.5, 97.5]) if boot else (float("nan"), float("nan"))
    return {"rho": rho, "p": p, "low": float(low), "high": float(high), "n": len(x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--shape", default="full")
    parser.add_argument("--resamples", type=int, default=10000)
    args = parser.parse_args()
    with open(args.sweep / f"layers-{args.shape}.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("accuracy")]
    accuracy = np.array([float(r["accuracy"]) for r in rows])
    print(
        f"{len(rows)} sites; accuracy per site: "
        + ", ".join(f"{r['site']} {float(r['accuracy']):.2f}" for r in rows)
    )
    print()
    print("| quantity | sites | Spearman ρ | permutation p (two-sided) | 95% bootstrap interval |")
    print("|---|---|---|---|---|")
    for key, label in QUANTITIES.items():
        have = [
            (float(r[key]), a) for r, a in zip(rows, accuracy, strict=True) if r.get(key) not in (None, "")
        ]
        if len(have) < 3:
            continue
        x, y = np.array([h[0] for h in have]), np.array([h[1] for h in have])
        c = correlate(x, y, args.resamples)
        print(
            f"| {label} | {c['n']} | {c['rho']:+.2f} | {c['p']:.3g} | [{c['low']:+.2f}, {c['high']:+.2f}] |"
        )


if __name__ == "__main__":
    main()
