"""What the methods really do on real pretrained weights and real data, offline (run on demand).

    .venv/bin/python benchmarks/real_weights.py                 # about an hour on a 2-core CPU
    .venv/bin/python benchmarks/real_weights.py --only efficientnet_lite0

For each offline backbone, on Fashion-MNIST (class-balanced subsets; tuning on train → val, final on
trainval → test, never choosing anything on test):

1. the AP layer preference: AP (full shape) at every stage (CNNs) or every other block (ViT), tuning
   split, validation accuracy per site;
   at two learning rates (0.1 and 0.01), since one rate can make some sites diverge;
2. the method comparison: every method's learning rate is picked on validation from a small grid
   (``vprompt sweep tune``'s rule), then one final run per method reports test accuracy, trainable
   parameters, train time and peak memory. AP goes to the site step 1 favoured.

CNNs (EfficientNet-Lite0, MobileNetV2; 64 px): linear, vp-pad (linear head), vp-expansive with ILM label
mapping onto the ImageNet head (the VP of the AP paper), ap, norm, bitfit, lora, full.
DINOv2 ViT-S/14 (98 px, 7×7 patches; fine-tuned for saliency, so weak general features): linear, ap,
vpt-shallow, vpt-deep, vapt.

Runs go to ``--out`` (default ``experiments-out/``): running again reuses finished runs and resumes
interrupted ones. The tables go to ``benchmarks/results/real_weights.md``; ``vprompt report`` on the
output folder gives the plots.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from vprompt.engine.rundir import RunDir
from vprompt.tools import sweep
from vprompt.tools.executors import Executor
from vprompt.tools.report import write_report
from vprompt.tools.tables import markdown

CNN = dict(img_size=64, train_size=2000, eval_size=1000, epochs=5, batch_size=64)
VIT = dict(img_size=98, train_size=1000, eval_size=500, epochs=5, batch_size=32)
#: learning-rate grids (SGD, momentum 0.9), by how many parameters a method trains; the frozen
#: backbone's BatchNorm stays in eval mode, so methods that change conv weights need small rates
FEW = [0.1, 0.03, 0.01]
NORM = [0.03, 0.01, 0.003]
MANY = [0.01, 0.003, 0.001]
TOKENS = [0.1, 0.03, 0.01]
BACKBONES = {
    "efficientnet_lite0": (
        CNN,
        [
            ("linear", {}, FEW),
            ("vp-pad", {}, FEW),
            ("vp-expansive", {"inner_size": 48, "mapping": "ilm"}, [1.0, 0.3, 0.1]),
            ("ap", None, FEW),
            ("norm", {}, NORM),
            ("bitfit", {}, NORM),
            ("lora", {}, MANY),
            ("full", {}, MANY),
        ],
    ),
    "mobilenet_v2": None,  # the same list as EfficientNet-Lite0
    "dinov2_vits14_imgfocus": (
        VIT,
        [
            ("linear", {}, TOKENS),
            ("ap", None, TOKENS),
            ("vpt-shallow", {}, TOKENS),
            ("vpt-deep", {}, TOKENS),
            ("vapt", {}, TOKENS),
        ],
    ),
}
BACKBONES["mobilenet_v2"] = BACKBONES["efficientnet_lite0"]


def layer_sites(name: str) -> list[str]:
    from vprompt import backbone

    sites = list(backbone(f"offline:{name}", img_size=BACKBONES[name][0]["img_size"]).sites)
    if any(s.startswith("stage.") for s in sites):
        return ["embed"] + [s for s in sites if s.startswith("stage.")]
    blocks = [s for s in sites if s.startswith("block.")]
    return ["embed"] + blocks[1::2]  # block.1, block.3, ... block.11


def run_backbone(name: str, out: Path, executor: Executor, log) -> dict:
    budget, methods = BACKBONES[name]
    base = dict(
        backbone=f"offline:{name}", data="fashion-mnist", lr=0.1, progress=False, **budget, method="ap"
    )
    log(f"== {name}: AP layer preference")
    layers = sweep.layers(base, out / name, sites=layer_sites(name), executor=executor)
    # the same sweep at a smaller rate: a site's accuracy at one rate can hide a divergence
    slow = sweep.layers(
        {**base, "lr": 0.01}, out / name / "lr0.01", sites=layer_sites(name), executor=executor
    )
    done = [r for r in layers["rows"] + slow["rows"] if r["accuracy"] is not None]
    best = max(done, key=lambda r: (r["accuracy"], -r["depth"]))["site"]  # best at either rate
    log(f"   best site on validation: {best}")
    rows = []
    for method, options, lrs in methods:
        options = {"site": best} if options is None else options
        log(f"== {name}: {method} (lr grid {lrs})")
        config = {**base, "method": method, "method_options": options}
        folder = out / name / (f"{method}-{options['site']}" if "site" in options else method)
        result = sweep.tune(config, folder, lrs=lrs, wds=[0.0], seeds=1, executor=executor)
        final = RunDir(folder / "final" / "seed0")
        s = final.read_summary() if final.finished else {}
        rows.append(
            {
                "method": method + (f" ({options['site']})" if "site" in options else ""),
                "lr": result["chosen"]["lr"] if result["chosen"] else None,
                "test": s.get("test_accuracy"),
                "params": s.get("trainable_parameters"),
                "params_no_head": s.get("trainable_parameters_without_head"),
                "percent": s.get("trainable_percent"),
                "seconds": s.get("train_seconds"),
                "memory": s.get("peak_memory_mib"),
            }
        )
    return {"layers": layers["rows"], "slow": slow["rows"], "best": best, "methods": rows, "budget": budget}


def to_markdown(name: str, r: dict) -> list[str]:
    b = r["budget"]
    lines = [
        f"## offline:{name}",
        "",
        f"Fashion-MNIST, {b['img_size']} px, {b['train_size']} training / {b['eval_size']} validation and "
        f"test images, {b['epochs']} epochs, batch {b['batch_size']}, SGD (momentum 0.9), cosine schedule.",
        "",
        "**AP layer preference** (tuning split, validation accuracy at lr 0.1 and at lr 0.01):",
        "",
        markdown(
            ["site", "val accuracy, lr 0.1 (%)", "val accuracy, lr 0.01 (%)", "train s (lr 0.1)"],
            [
                [x["site"], x["accuracy"], y["accuracy"], x["train_seconds"]]
                for x, y in zip(r["layers"], r["slow"], strict=True)
            ],
        ),
        "",
        f"**Methods** (lr picked on validation; one final run on trainval → test; AP at `{r['best']}`):",
        "",
        markdown(
            [
                "method",
                "lr",
                "test accuracy (%)",
                "trainable",
                "w/o head",
                "% of total",
                "train s",
                "peak MiB",
            ],
            [
                [
                    m["method"],
                    m["lr"],
                    m["test"],
                    f"{m['params']:,}" if m["params"] else None,
                    f"{m['params_no_head']:,}" if m["params_no_head"] is not None else None,
                    f"{m['percent']:.3f}" if m["percent"] is not None else None,
                    m["seconds"],
                    m["memory"],
                ]
                for m in r["methods"]
            ],
        ),
        "",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("experiments-out"))
    parser.add_argument("--only", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "real_weights.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    executor = Executor("local", log=None)
    text = [
        "# Real weights, real data: what the methods do",
        "",
        f"Command: `python benchmarks/real_weights.py{' --only ' + ' '.join(args.only) if args.only != list(BACKBONES) else ''}` "
        f"· {platform.node()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__} · {time.strftime('%Y-%m-%d')}",
        "",
    ]
    for name in args.only:
        result = run_backbone(name, args.out, executor, print)
        text += to_markdown(name, result)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text("\n".join(text) + "\n")  # after each backbone, in case of interruption
    write_report([args.out], args.out / "report")
    text.append(f"Total time: {(time.time() - started) / 60:.0f} min. Plots: `vprompt report {args.out}`.")
    args.results.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
