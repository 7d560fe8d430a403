"""``benchmarks/layer_analysis.py``: its rank statistics against values worked out by hand, and the
per-seed accuracies it reads from a (fake) multi-seed layer sweep folder."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("layer_analysis", BENCHMARKS / "layer_analysis.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["layer_analysis"] = module
    spec.loader.exec_module(module)
    return module


la = _load()


def test_ranks_average_ties():
    assert la.ranks(np.array([10.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_spearman_hand_values():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # d = (-1, 1, -1, 1, 0): rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert la.spearman(x, np.array([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8, abs=1e-12)
    assert la.spearman(x, x**3) == pytest.approx(1.0, abs=1e-12)
    assert la.spearman(x, -x) == pytest.approx(-1.0, abs=1e-12)
    # ties: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert la.spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.arange(4.0)) == pytest.approx(
        4.5 / np.sqrt(4.5 * 5), abs=1e-12
    )
    assert np.isnan(la.spearman(x, np.ones(5)))
    rows = la.spearman(np.broadcast_to(x, (2, 5)), np.stack([x, -x]))  # one rho per row
    assert rows.tolist() == pytest.approx([1.0, -1.0])


def test_permutation_p_exact_and_sampled():
    rng = np.random.default_rng(0)
    x = np.arange(4.0)
    # 4! = 24 orders; |rho| = 1 only for the identity and its reverse: p = 2 / 24
    assert la.permutation_p(x, x.copy(), 24, rng) == pytest.approx(2 / 24)
    # rho = 0.8 for n = 5: the orders with |rho| >= 0.8 are those with sum d^2 <= 4 or >= 36;
    # sum d^2 in {0, 2, 4} is 1 + 4 + 3 = 8 orders, mirrored by 8 more: p = 16 / 120
    x5 = np.arange(5.0)
    assert la.permutation_p(x5, np.array([1.0, 0.0, 3.0, 2.0, 4.0]), 120, rng) == pytest.approx(16 / 120)
    # fewer resamples than orders: Monte Carlo (k + 1) / (R + 1), close to the exact value
    sampled = la.permutation_p(x5, np.array([1.0, 0.0, 3.0, 2.0, 4.0]), 119, rng)
    assert sampled == pytest.approx(16 / 120, abs=0.08)
    assert sampled >= 1 / 120


def test_correlate_means_and_intervals():
    x = np.arange(4.0)
    # site means 1, 2, 3, 4 (increasing with x); seeds identical within a site: no seed noise
    samples = [np.array([m, m, m]) for m in (1.0, 2.0, 3.0, 4.0)]
    c = la.correlate(x, samples, resamples=500, reference=x)
    assert c["rho"] == pytest.approx(1.0)
    assert c["p"] == pytest.approx(2 / 24)
    assert c["seeds_interval"] == pytest.approx((1.0, 1.0))
    assert c["two_level_interval"] == pytest.approx((1.0, 1.0))  # any resample of distinct sites: 1
    assert c["versus_reference"] == pytest.approx((0.0, 0.0))  # x is its own reference
    assert c["seeds"] == [3, 3, 3, 3]


def test_correlate_seed_noise_widens_interval():
    x = np.arange(4.0)
    # means 1, 2, 3, 4, but each site's seeds span ±3: resampled seeds reorder the sites
    samples = [np.array([m - 3, m, m + 3]) for m in (1.0, 2.0, 3.0, 4.0)]
    c = la.correlate(x, samples, resamples=2000)
    assert c["rho"] == pytest.approx(1.0)
    low, high = c["seeds_interval"]
    assert low < 0 and high == pytest.approx(1.0)
    # the means with one seed per site are the values themselves
    one = la.correlate(x, [np.array([v]) for v in (4.0, 3.0, 2.0, 1.0)], resamples=100)
    assert one["rho"] == pytest.approx(-1.0) and one["seeds_interval"] == pytest.approx((-1.0, -1.0))


def test_correlate_paired_seeds_cancel_shared_offsets():
    x = np.arange(4.0)
    # site i, seed k: m_i + offset_k; a seed shifts every site alike (same training images for all)
    offsets = np.array([0.0, -10.0, 10.0])
    samples = [m + offsets for m in (1.0, 2.0, 3.0, 4.0)]
    paired = la.correlate(x, samples, resamples=1000, paired=True)
    assert paired["per_seed"] == pytest.approx([1.0, 1.0, 1.0])
    assert paired["seeds_interval"] == pytest.approx((1.0, 1.0))  # the ranks never change
    assert paired["two_level_interval"] == pytest.approx((1.0, 1.0))
    unpaired = la.correlate(x, samples, resamples=1000)  # seeds drawn per site: the offsets reorder them
    assert unpaired["seeds_interval"][0] < 0
    with pytest.raises(ValueError, match="same number"):
        la.correlate(np.arange(2.0), [np.array([1.0, 2.0]), np.array([1.0])], paired=True)


def test_correlate_rejects_mismatch():
    with pytest.raises(ValueError, match="per site"):
        la.correlate(np.arange(3.0), [np.array([1.0])] * 2)
    with pytest.raises(ValueError, match="per site"):
        la.correlate(np.arange(2.0), [np.array([1.0]), np.array([])])


def _fake_sweep(root: Path) -> Path:
    sites = {
        "embed": (1, 0.5, [50.0, 52.0, 54.0]),
        "block.0": (2, 0.7, [60.0, 61.0, 62.0]),
        "block.1": (3, 0.9, [70.0, 40.0, 55.0]),
    }
    rows = []
    for site, (depth, cka, accs) in sites.items():
        runs = []
        for seed, acc in enumerate(accs):
            run = f"layers/full/{site}" + ("" if seed == 0 else f"-seed{seed}")
            (root / run).mkdir(parents=True)
            (root / run / "summary.json").write_text(json.dumps({"seed": seed, "val_accuracy": acc}))
            runs.append(run)
        rows.append([site, depth, "val", float(np.mean(accs)), cka, " ".join(runs)])
    with open(root / "layers-full.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["site", "depth", "split", "accuracy", "cka_final", "run"])
        w.writerows(rows)
    return root


def test_load_sweep_reads_every_seed(tmp_path, capsys):
    folder = _fake_sweep(tmp_path)
    rows = la.load_sweep(folder)
    assert [r["site"] for r in rows] == ["embed", "block.0", "block.1"]
    assert rows[0]["samples"].tolist() == [50.0, 52.0, 54.0]
    assert rows[2]["seed_ids"] == [0, 1, 2]
    la.main([str(folder), "--resamples", "50", "--binomial", "1000"])
    out = capsys.readouterr().out
    assert "| embed | 1 | 50.00 | 52.00 | 54.00 | 52.00 ± 2.00 | 0.500 |" in out
    assert "| block.1 | 3 | 70.00 | 40.00 | 55.00 | 55.00 ± 15.00 | 0.900 |" in out
    # means 52, 61, 55 against CKA 0.5, 0.7, 0.9: ranks (1, 3, 2) vs (1, 2, 3): rho = 0.5; 3! = 6 orders
    # rho within seed 0 (50, 60, 70): +1; seed 1 (52, 61, 40): ranks (2, 3, 1): 1 - 6 * 6 / 24 = -0.5;
    # seed 2 (54, 62, 55): ranks (1, 3, 2): +0.5
    assert "| linear CKA with pre_logits | 3 | +0.50 | 1 | +1.00 -0.50 +0.50 |" in out
    assert "(max − min, points): seed 0 20.00, seed 1 21.00, seed 2 8.00." in out
    assert "seeds resampled jointly" in out
    assert "| depth (site index) | 3 | +0.50 | 1 |" in out


def test_summary_one_row_per_sweep(tmp_path, capsys):
    folder = _fake_sweep(tmp_path)
    la.main([str(folder), str(folder), "--summary", "--resamples", "50"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| sweep | sites | mean accuracy (%) | CKA→pre_logits |")
    assert len(lines) == 4  # header, rule, two sweeps
    assert lines[2].startswith(f"| {folder} | 3 | 52.00–61.00 | +0.50 (p 1) [")
    assert lines[2].endswith("|") and lines[2].count("–") == 5  # the range's dash, 4 quantities missing


def test_binomial_se():
    assert la.binomial_se(50.0, 100) == pytest.approx(5.0)
    assert la.binomial_se(60.0, 1000) == pytest.approx(100 * np.sqrt(0.24 / 1000))
