"""What a `vprompt sweep tune` (grid + final runs) costs (i) as main runs it, (ii) with the exact savings
(divergence stop, one frozen-prefix cache per sweep) and (iii) with `--search asha`, on the offline real
weights and data, for ten cases (method x backbone x dataset); whether (iii) chooses the full grid's point
and, where it does not, the final test accuracy it gives against the full grid's.

    python benchmarks/sweep_cost.py --out /tmp/sweep-cost [--cases a,b] [--jobs 2] > table.md

Each case runs its three modes one after another in one worker (one thread: OMP_NUM_THREADS=1), so a
case's ratios are measured under the same conditions; ``--jobs`` workers run cases side by side. Every
case has the official grid's shape (10 lrs x 4 weight decays, 5 final seeds; ``GRID``) and a budget that
fits a 2-core CPU (``SCALE``). (i) is
`--no-shared-cache --nonfinite error`: main's behaviour (a NaN loss raises within 10 steps and the run
fails; every run builds its own cache). Costs: the command's wall clock (one process, one thread: its
whole compute) and the images through forward+backward, evaluation and the frozen prefix (compute.json;
(i)'s failed runs record none, so its image counts are slightly low). A rerun reuses finished sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCALE = [
    "--train-size", "64", "--eval-size", "64", "--epochs", "6", "--batch-size", "16",
    "--optimizer", "sgd", "--schedule", "cosine", "--warmup-epochs", "0", "--no-lr-scale",
    "--device", "cpu", "--no-progress", "--quiet",
]  # fmt: skip
#: the official grid's shape (10 lrs x 4 weight decays, 5 final seeds: KMnP/vpt tune_vtab.py), its rates
#: moved to where these backbones learn in 6 epochs (VPT's 50 ... 0.05 leave DINOv2 at chance here)
GRID = [
    "--lr", "0.5,0.25,0.1,0.05,0.025,0.01,0.005,0.0025,0.001,0.0005",
    "--weight-decay", "0.01,0.001,0.0001,0", "--seeds", "5",
]  # fmt: skip
DINO = ["--backbone", "offline:dinov2_vits14_imgfocus", "--img-size", "42"]
EFFNET = ["--backbone", "offline:efficientnet_lite0", "--img-size", "64"]
FMNIST, MNIST = ["--data", "fashion-mnist"], ["--data", "mnist-5k"]
VPT = ["--method", "vpt-deep", "--num-prompts", "10"]
LORA = ["--method", "lora", "--r", "4"]
CASES = {
    "linear dinov2 fashion-mnist": ["--method", "linear", *DINO, *FMNIST],
    "linear effnet mnist-5k": ["--method", "linear", *EFFNET, *MNIST],
    "ap block.10 dinov2 fashion-mnist": ["--method", "ap", "--site", "block.10", *DINO, *FMNIST],
    "ap stage.5 effnet mnist-5k": ["--method", "ap", "--site", "stage.5", *EFFNET, *MNIST],
    "vpt-deep dinov2 fashion-mnist": [*VPT, *DINO, *FMNIST],
    "vpt-deep dinov2 mnist-5k": [*VPT, *DINO, *MNIST],
    "vapt dinov2 fashion-mnist": ["--method", "vapt", *DINO, *FMNIST],
    "vapt dinov2 mnist-5k": ["--method", "vapt", *DINO, *MNIST],
    "lora dinov2 fashion-mnist": [*LORA, *DINO, *FMNIST],
    "lora effnet mnist-5k": [*LORA, *EFFNET, *MNIST],
}  # fmt: skip
MODES = {
    "i": ["--no-shared-cache", "--nonfinite", "error"],
    "ii": [],
    "iii": ["--search", "asha", "--asha-grace", "1", "--asha-reduction", "3"],
}


def run_case(case: str, out: Path) -> dict:
    """The three modes of one case, one after another; each mode's cost and choice."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    modes = {}
    for mode, flags in MODES.items():
        folder = out / case.replace(" ", "_") / mode
        command = [sys.executable, "-m", "vprompt", "sweep", "tune", *SCALE, *GRID, *CASES[case], *flags]
        command += ["--output", str(folder)]
        wall_file = folder.parent / f"{mode}.wall"
        if not (folder / "result.json").exists():
            print(f"[{case}] {mode}: " + " ".join(command[3:]), file=sys.stderr, flush=True)
            start = time.perf_counter()
            status = subprocess.run(command, stdout=subprocess.DEVNULL, env=env).returncode
            wall_file.write_text(f"{time.perf_counter() - start:.1f} {status}\n")
        wall, status = wall_file.read_text().split()
        result = json.loads((folder / "result.json").read_text())
        modes[mode] = {"wall": float(wall), "exit": int(status), "result": result}
        print(f"[{case}] {mode}: {float(wall):.0f} s, exit {status}", file=sys.stderr, flush=True)
    return modes


def paired(a: list[dict], b: list[dict]) -> tuple[float, float]:
    """Mean and standard error of b - a over the final seeds both have."""
    ta = {f["seed"]: f["test_accuracy"] for f in a if f.get("test_accuracy") is not None}
    tb = {f["seed"]: f["test_accuracy"] for f in b if f.get("test_accuracy") is not None}
    d = [tb[s] - ta[s] for s in sorted(ta.keys() & tb.keys())]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return statistics.fmean(d), se


def kept(result: dict) -> str:
    """How many grid points went on at each rung of a search (``40→13→4``); ``–`` for the full grid."""
    search = result.get("search")
    if not search:
        return "–"
    counts = [len(search["rung_results"][0]["points"])] if search["rung_results"] else []
    counts += [sum(p["kept"] for p in r["points"]) for r in search["rung_results"]]
    return "→".join(map(str, counts))


def rows_of(case: str, modes: dict) -> list[list[str]]:
    base = modes["i"]["result"]
    rows = []
    for mode, m in modes.items():
        r = m["result"]
        spent, runs = r["compute"]["spent"], r["compute"]["runs"]
        chosen = r["chosen"]
        same = (chosen["lr"], chosen["weight_decay"]) == (
            base["chosen"]["lr"],
            base["chosen"]["weight_decay"],
        )
        diff, se = paired(base["final"], r["final"])
        test = r["test_accuracy"]
        if mode == "i":
            verdict = "–"
        elif same:
            verdict = "same point"
        else:
            within = "within" if abs(diff) <= 2 * se or diff == 0 else "beyond"
            verdict = f"other point; Δ {diff:+.1f} ± {se:.1f} ({within} 2 SE)"
        ratio = lambda a, b: f"{a / b:.2f}" if b else "–"  # noqa: E731
        rows.append(
            [
                case,
                f"({mode})",
                f"{m['wall']:.0f} ({ratio(m['wall'], modes['i']['wall'])})",
                f"{spent['run_seconds']:.0f} ({ratio(spent['run_seconds'], base['compute']['spent']['run_seconds'])})",
                f"{spent['images_trained']:.0f} ({ratio(spent['images_trained'], base['compute']['spent']['images_trained'])})",
                f"{spent['images_evaluated']:.0f}",
                f"{spent['cache_images']:.0f}",
                f"{runs['diverged']} / {len(r.get('failures') or [])}",
                kept(r),
                f"lr {chosen['lr']:g} wd {chosen['weight_decay']:g} ({chosen['val_accuracy']:.1f})",
                f"{test['mean']:.1f} ± {test['std']:.1f}" if test else "–",
                verdict,
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--jobs", type=int, default=1, help="cases run side by side (one thread each)")
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; cases: {', '.join(CASES)}")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(cases, pool.map(lambda c: run_case(c, args.out), cases), strict=True))
    headers = ["case", "mode", "wall s (× (i))", "run-s (× (i))", "images fwd+bwd (× (i))", "images evaluated",
               "images via prefix", "diverged / failed", "points kept at rungs", "chosen (val %)",
               "test % (5 seeds)", "against (i)"]  # fmt: skip
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for case, modes in results.items():
        for row in rows_of(case, modes):
            print("| " + " | ".join(row) + " |")
    for unit, value in (
        ("wall s", lambda m: m["wall"]),
        ("run-s", lambda m: m["result"]["compute"]["spent"]["run_seconds"]),
    ):
        total = {mode: sum(value(r[mode]) for r in results.values()) for mode in MODES}
        print(f"\nTotal {unit}: {', '.join(f'({m}) {t:.0f}' for m, t in total.items())}; "
              f"(ii)/(i) {total['ii'] / total['i']:.2f}, (iii)/(i) {total['iii'] / total['i']:.2f}")  # fmt: skip
    (args.out / "sweep_cost.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
