"""bf16 autocast on a CPU that has it, against fp32 (run on demand, never a test).

    .venv/bin/python benchmarks/bf16_cpu.py                   # accuracy: the demo's methods in fp32 and bf16
    .venv/bin/python benchmarks/bf16_cpu.py --timing          # train-step time, fp32 vs bf16, interleaved
    .venv/bin/python benchmarks/bf16_cpu.py --timing --tiny   # the same on ViT-Tiny at 32 px: checks it runs

Accuracy (default): the real-weights demo setting (``vprompt demo``: offline EfficientNet-Lite0,
Fashion-MNIST, 2,000 training / 1,000 test images, 64 px, 5 epochs, batch 64, each method's demo learning
rate, seed 0), every demo method trained twice, ``--precision fp32`` then ``--precision bf16``; the
table gives both test accuracies and train times. Runs go to ``--out``; finished runs are reused. Train
times measured on a loaded machine say little; the accuracies do not depend on load.

Timing (``--timing``): the SPEC §6 setting (ViT-B/16 at 224 px, batch 4, random weights, SGD), train-step
time of vpt-deep, linear and AP at ``block.9`` in fp32 and in bf16, alternating in one process so that
drifts in machine speed hit both alike; run it on a quiet machine.

A CPU without native bf16 is refused by vprompt (``--precision bf16`` is an error there), and so is this
script.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from vprompt.engine import train
from vprompt.engine.precision import cpu_bf16, require_cpu_bf16
from vprompt.tools.bench import measure
from vprompt.tools.demo import BACKBONE, METHODS, Budget, run_settings
from vprompt.tools.tables import markdown

RESULTS = Path(__file__).parent / "results"
PRECISIONS = ("fp32", "bf16")
#: the timing setting (SPEC §6), and a tiny one that only checks the script runs
TIMING = dict(backbone="vit_base_patch16_224", img_size=224, batch=4, steps=10, warmup=3, rounds=3)
TINY = dict(backbone="vit_tiny_patch16_224", img_size=32, batch=2, steps=2, warmup=1, rounds=1)
TIMED_METHODS = [("vpt-deep", {}), ("linear", {}), ("ap", {"site": "block.9"})]


def machine() -> str:
    found = cpu_bf16()
    return (
        f"{platform.node()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, native bf16: {'yes' if found.supported else 'no'} ({found.looked_for})"
    )


def label(method: str, options: dict) -> str:
    return method + (f" ({options['site']})" if "site" in options else "")


def accuracy_runs(out: Path, log):
    """Every demo method in fp32 and in bf16, same seed and budget; yields one row per method."""
    budget = Budget()
    for method, options, optimizer, lr in METHODS:
        row = {"method": label(method, options), "lr": lr}
        for precision in PRECISIONS:
            summary = train(
                run_settings(budget, method, options, optimizer, lr, precision=precision, progress=False),
                output=out / "runs" / f"{method}-{precision}",
                resume=True,  # a finished run is reused
            )
            if summary["precision"] != precision:
                raise RuntimeError(
                    f"{method}: asked for {precision}, the run recorded {summary['precision']}"
                )
            row[precision] = summary
            log(
                f"  {row['method']:<14} {precision}: test {summary['test_accuracy']:5.1f}%  "
                f"train {summary['train_seconds']:.1f} s"
            )
        yield row


def accuracy_table(rows: list[dict]) -> str:
    headers = [
        "method",
        "lr",
        "fp32 test acc (%)",
        "bf16 test acc (%)",
        "Δ (points)",
        "fp32 train s",
        "bf16 train s",
    ]
    body = [
        [
            r["method"],
            r["lr"],
            f"{r['fp32']['test_accuracy']:.1f}",
            f"{r['bf16']['test_accuracy']:.1f}",
            f"{r['bf16']['test_accuracy'] - r['fp32']['test_accuracy']:+.1f}",
            f"{r['fp32']['train_seconds']:.1f}",
            f"{r['bf16']['train_seconds']:.1f}",
        ]
        for r in rows
    ]
    return markdown(headers, body).rstrip("\n")


def step_times(setting: dict, threads: int, log) -> list[dict]:
    """Median train-step seconds per method and precision, the two precisions alternating (each round
    builds the model afresh in both, in alternating order)."""
    rows = []
    for method, options in TIMED_METHODS:
        medians: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for round_ in range(setting["rounds"]):
            for precision in PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]:
                result = measure(
                    setting["backbone"],
                    method,
                    options,
                    batch=setting["batch"],
                    img_size=setting["img_size"],
                    steps=setting["steps"],
                    warmup=setting["warmup"],
                    threads=threads,
                    precision=precision,
                )
                if result["precision"] != precision:
                    raise RuntimeError(f"{method}: asked for {precision}, measured {result['precision']}")
                medians[precision].append(result["step_seconds"]["median"])
        row = {"method": label(method, options)} | {p: statistics.median(v) for p, v in medians.items()}
        log(f"  {row['method']:<16} fp32 {1e3 * row['fp32']:.1f} ms  bf16 {1e3 * row['bf16']:.1f} ms")
        rows.append(row)
    return rows


def timing_table(rows: list[dict]) -> str:
    headers = ["method", "fp32 step ms", "bf16 step ms", "bf16 / fp32"]
    body = [
        [r["method"], f"{1e3 * r['fp32']:.1f}", f"{1e3 * r['bf16']:.1f}", f"{r['bf16'] / r['fp32']:.2f}×"]
        for r in rows
    ]
    return markdown(headers, body).rstrip("\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timing", action="store_true", help="train-step times instead of accuracies")
    parser.add_argument(
        "--tiny", action="store_true", help="with --timing: ViT-Tiny at 32 px, one short round"
    )
    parser.add_argument("--out", type=Path, default=Path("experiments-out") / "bf16_cpu", help="run folder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="markdown file written (default: benchmarks/results/bf16_cpu.md, or bf16_cpu_timing.md with "
        "--timing; --tiny writes nothing unless given)",
    )
    args = parser.parse_args()
    if args.tiny and not args.timing:
        parser.error("--tiny is for --timing")
    torch.set_num_threads(args.threads)
    require_cpu_bf16()
    started = time.time()
    command = " ".join(["python benchmarks/bf16_cpu.py", *sys.argv[1:]])
    head = [f"Command: `{command}` · {machine()} · {time.strftime('%Y-%m-%d')}", ""]
    if args.timing:
        setting = TINY if args.tiny else TIMING
        rows = step_times(setting, args.threads, print)
        text = [
            "# bf16 on a CPU: train-step time",
            "",
            *head,
            f"{setting['backbone']} at {setting['img_size']} px, batch {setting['batch']}, random weights, SGD "
            f"(momentum 0.9); per method and precision the median step of {setting['steps']} (after "
            f"{setting['warmup']} untimed), median over {setting['rounds']} rounds that alternate the order.",
            "",
            timing_table(rows),
        ]
        results = args.results or (None if args.tiny else RESULTS / "bf16_cpu_timing.md")
        write(text, started, results, runs=False)
        return 0
    budget = Budget()
    rows = []
    for row in accuracy_runs(args.out, print):  # the table is rewritten after each method
        rows.append(row)
        partial = len(rows) < len(METHODS)
        text = [
            "# bf16 on a CPU: accuracy against fp32",
            "",
            *head,
            f"The demo setting: {BACKBONE} (ImageNet weights), Fashion-MNIST, {budget.train_size} training / "
            f"{budget.eval_size} test images, {budget.img_size} px, {budget.epochs} epochs, batch "
            f"{budget.batch_size}, SGD (momentum 0.9) at each method's demo learning rate, seed 0; each "
            "method trained once with `--precision fp32` and once with `--precision bf16`.",
            "",
            *([f"**Partial: {len(rows)} of {len(METHODS)} methods so far.**", ""] if partial else []),
            accuracy_table(rows),
            "",
            "Train times were measured on a machine shared with other work: they are recorded, not a speed",
            "comparison (`--timing` is that, on a quiet machine).",
        ]
        write(text, started, args.results or RESULTS / "bf16_cpu.md", quiet=partial)
    return 0


def write(
    text: list[str], started: float, results: Path | None, quiet: bool = False, runs: bool = True
) -> None:
    """Print ``text`` (unless ``quiet``) and write it to ``results``, with how long this invocation took."""
    took = f"This invocation took {(time.time() - started) / 60:.1f} min"
    text = [*text, "", took + (" (finished runs are reused)." if runs else ".")]
    if not quiet:
        print("\n".join(text))
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text("\n".join(text) + "\n")
        print(f"written to {results}")


if __name__ == "__main__":
    raise SystemExit(main())
