"""``benchmarks/sweep_cost.py`` and ``benchmarks/efficiency.py``'s part D verdict: their arithmetic
against values worked out by hand, on (fake) sweep records."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sweep_cost = _load("sweep_cost")


def finals(*accuracies):
    return [{"seed": s, "test_accuracy": a} for s, a in zip((42, 44, 82), accuracies, strict=False)]


def test_paired_difference_is_per_seed_with_its_standard_error():
    mean, se = sweep_cost.paired(finals(50.0, 60.0, 40.0), finals(52.0, 60.0, 44.0))
    # differences 2, 0, 4: mean 2, sample std 2, SE 2 / sqrt(3)
    assert mean == pytest.approx(2.0)
    assert se == pytest.approx(2.0 / math.sqrt(3))
    # a seed missing on one side is left out, not counted as zero
    mean, _ = sweep_cost.paired(finals(50.0, 60.0), finals(52.0, 60.0, 44.0))
    assert mean == pytest.approx(1.0)


def record(lr, wd, tests, search=None, wall=100.0, seconds=80.0, images=1000.0):
    result = {
        "chosen": {"lr": lr, "weight_decay": wd, "val_accuracy": 50.0},
        "final": finals(*tests),
        "test_accuracy": {"mean": sum(tests) / len(tests), "std": 1.0, "n": len(tests)},
        "failures": [],
        "search": search,
        "compute": {
            "spent": {
                "run_seconds": seconds,
                "images_trained": images,
                "images_evaluated": 10.0,
                "cache_images": 5.0,
            },
            "runs": {"diverged": 0},
        },
    }
    return {"wall": wall, "exit": 0, "result": result}


def test_rows_name_same_and_other_points_and_the_ratios_to_the_full_grid():
    search = {
        "rung_results": [
            {"points": [{"kept": True}, {"kept": False}, {"kept": True}, {"kept": False}]},
            {"points": [{"kept": True}, {"kept": False}]},
        ]
    }
    modes = {
        "i": record(0.01, 0.0, [50.0, 60.0, 40.0]),
        "ii": record(0.01, 0.0, [50.0, 60.0, 40.0], wall=70.0, seconds=40.0),
        "iii": record(0.1, 0.0, [60.0, 70.0, 50.0], search=search, wall=30.0, seconds=20.0, images=250.0),
    }
    rows = sweep_cost.rows_of("case", modes)
    assert [r[1] for r in rows] == ["(i)", "(ii)", "(iii)"]
    assert rows[1][2] == "70 (0.70)" and rows[1][3] == "40 (0.50)" and rows[1][-1] == "same point"
    assert rows[2][2] == "30 (0.30)" and rows[2][4] == "250 (0.25)"
    assert rows[2][8] == "4→2→1"
    # +10 on every seed: SE 0, so a real difference, beyond noise
    assert rows[2][-1] == "other point; Δ +10.0 ± 0.0 (beyond 2 SE)"
    assert sweep_cost.kept({"search": None}) == "–"


def test_other_point_within_noise():
    modes = {"i": record(0.01, 0.0, [50.0, 60.0, 40.0]), "iii": record(0.1, 0.0, [52.0, 58.0, 42.0])}
    # differences 2, -2, 2: mean 0.67, SE 1.33
    assert sweep_cost.rows_of("case", modes)[1][-1] == "other point; Δ +0.7 ± 1.3 (within 2 SE)"


def test_unread_verdict_says_when_the_target_is_below_the_arithmetic_bound():
    efficiency = _load("efficiency")
    assert efficiency.unread_verdict(0.91, 0.893) == "≤ 0.88: unreachable (bound 0.893)"
    assert (
        efficiency.unread_verdict(0.80, 0.893) == "≤ 0.88: unreachable (bound 0.893); below the bound: noise"
    )
    assert efficiency.unread_verdict(0.86, 0.85) == "≤ 0.88: ✅"
    assert efficiency.unread_verdict(0.90, 0.85) == "≤ 0.88: ❌"
