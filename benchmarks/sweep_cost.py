"""What a `vprompt sweep tune` (grid + final runs) costs (i) as main runs it, (ii) with the exact savings
(divergence stop, one frozen-prefix cache per sweep) and (iii) with `--search asha`, on the offline real
weights and data; whether (iii) chooses the full grid's point. Writes the table to stdout (markdown).

    python benchmarks/sweep_cost.py --out /tmp/sweep-cost [--cases linear,ap]

(i) is `--no-shared-cache --nonfinite error`: main's behaviour (a NaN loss raises within 10 steps and the
run fails; every run builds its own cache). Seconds are the command's wall clock and the runs' own
run-seconds (compute.json; failed runs record none).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

COMMON = [
    "--data", "fashion-mnist", "--img-size", "64", "--train-size", "400", "--eval-size", "200",
    "--epochs", "6", "--batch-size", "32", "--seeds", "2", "--device", "cpu", "--no-progress", "--quiet",
]  # fmt: skip
CASES = {
    "linear": ["--backbone", "offline:efficientnet_lite0", "--method", "linear",
               "--lr", "1e4,1,0.1,0.01", "--weight-decay", "0,1e-3"],
    "ap": ["--backbone", "offline:efficientnet_lite0", "--method", "ap", "--site", "stage.5",
           "--lr", "1e4,1,0.1,0.01", "--weight-decay", "0,1e-3"],
    "lora": ["--backbone", "offline:dinov2_vits14_imgfocus", "--img-size", "56", "--method", "lora",
             "--r", "4", "--lr", "1e3,0.1,0.01,0.001", "--weight-decay", "0,1e-3"],
}  # fmt: skip
MODES = {
    "(i) as main": ["--no-shared-cache", "--nonfinite", "error"],
    "(ii) exact savings": [],
    "(iii) --search asha": ["--search", "asha", "--asha-grace", "1", "--asha-reduction", "3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    rows = []
    for case in args.cases.split(","):
        chosen = {}
        for mode, flags in MODES.items():
            out = args.out / case / mode.split()[0].strip("()")
            command = [sys.executable, "-m", "vprompt", "sweep", "tune", *COMMON, *CASES[case], *flags]
            command += ["--output", str(out)]
            print(" ".join(command[1:]), file=sys.stderr, flush=True)
            start = time.perf_counter()
            status = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
            wall = time.perf_counter() - start
            result = json.loads((out / "result.json").read_text())
            spent, saved = result["compute"]["spent"], result["compute"]["saved"]
            chosen[mode] = result["chosen"]
            rows.append(
                [
                    case,
                    mode,
                    f"{wall:.0f}",
                    f"{spent['run_seconds']:.0f}",
                    f"{spent['images_trained']:.0f}",
                    f"{spent['cache_images']:.0f}",
                    f"{saved['cache_builds_saved']:.0f}",
                    f"{saved['epochs_skipped_diverged']:.1f}",
                    f"{saved['epochs_skipped_search']:.0f}",
                    f"lr {result['chosen']['lr']:g} wd {result['chosen']['weight_decay']:g}",
                    f"{result['test_accuracy']['mean']:.2f}" if result["test_accuracy"] else "–",
                    str(status),
                ]
            )
    headers = ["case", "mode", "wall s", "run-s", "images fwd+bwd", "images via prefix",
               "cache builds saved", "epochs skipped (NaN)", "epochs skipped (ASHA)", "chosen",
               "test acc (%)", "exit"]  # fmt: skip
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
