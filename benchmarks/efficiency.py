"""Efficiency benchmark: is AP as cheap as it should be, and how do VPT-deep and VAPT compare?

Run on demand (minutes on a 2-core CPU), never as a test:

    .venv/bin/python benchmarks/efficiency.py                  # writes benchmarks/results/efficiency.md
    .venv/bin/python benchmarks/efficiency.py --quick          # fewer steps, smaller settings

Part A (CPU-sized: ViT-S/16 at 112 px, 50 tokens, batch 16, random weights, 2 threads):
  A1. AP's train step vs the prefix forward plus the suffix forward-and-backward, measured separately
      (target: ratio <= 1.10);
  A2. AP vs VPT-deep vs VAPT, step time and training memory at the same batch (target: AP cheaper);
  A3. epoch time of AP three quarters deep, with and without the frozen-prefix cache (target: >= 4x),
      on ViT-S with synthetic images and on the offline EfficientNet-Lite0 with Fashion-MNIST.
Part B (SPEC §6 setting: ViT-B/16 at 224, batch 4, random weights, SGD, 2 threads): step times as
multiples of a linear-probe step, training memory above the built model, against the official
implementations' figures quoted in the specification.

Every number is measured in this run; memory comes from a fresh process per method.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import vprompt
from vprompt.tools.bench import bench, epoch_times, table, time_steps

# SPEC §6: official implementations, as multiples of a timm linear-probe step, and memory above the model
OFFICIAL = {"vpt-deep": (2.00, 611), "vapt": (2.23, 661), "lora": (1.96, 531), "full": (2.75, None)}
TARGETS = {"vpt-deep": 1.7, "vapt": 1.9}


def prefix_suffix_ratio(backbone: str, img_size: int, batch: int, site: str, steps: int) -> dict:
    """A1: the AP step against its two halves timed on their own."""
    torch.manual_seed(0)
    bb = vprompt.backbone(backbone, pretrained=False, num_classes=10, img_size=img_size)
    model = vprompt.attach(bb, "ap", site=site).train()
    x, y = torch.randn(batch, *bb.input_size), torch.randint(0, 10, (batch,))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def full_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    def prefix():
        with torch.no_grad():
            return bb.site(site).capture(bb.model, x)

    activation = prefix()

    def suffix_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model.forward_from(site, activation), y).backward()
        optimizer.step()

    device = torch.device("cpu")
    # interleave the three measurements so that drifts in machine speed hit them alike
    rounds = {"step": [], "prefix": [], "suffix": []}
    for _ in range(3):
        rounds["step"] += time_steps(full_step, steps, 2, device)
        rounds["prefix"] += time_steps(prefix, steps, 2, device)
        rounds["suffix"] += time_steps(suffix_step, steps, 2, device)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    return {**med, "ratio": med["step"] / (med["prefix"] + med["suffix"]), "site": site}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps; skip part B")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "efficiency.md")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = 5 if args.quick else 10
    started = time.time()
    out = []
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    command = "python benchmarks/efficiency.py" + (" --quick" if args.quick else "")
    out += [
        "# Efficiency benchmark",
        "",
        f"Command: `{command}` · machine: {platform.node()} ({machine}) · {time.strftime('%Y-%m-%d')}",
        "",
    ]

    # ------------------------------------------------------------------------------------------ A
    backbone, size, batch = "vit_small_patch16_224", 112, 16
    site = "block.8"  # three quarters of 12 blocks
    print("A1 ...", file=sys.stderr)
    a1 = prefix_suffix_ratio(backbone, size, batch, site, steps)
    out += [
        f"## A. ViT-S/16 at {size} px ({(size // 16) ** 2 + 1} tokens), batch {batch}, random weights",
        "",
        f"**A1. AP at `{site}`: train step vs its parts measured separately** (median of {3 * steps} each)",
        "",
        "| AP step | prefix forward | suffix forward + backward + update | step / (prefix + suffix) | target |",
        "|---|---|---|---|---|",
        f"| {1e3 * a1['step']:.1f} ms | {1e3 * a1['prefix']:.1f} ms | {1e3 * a1['suffix']:.1f} ms "
        f"| **{a1['ratio']:.3f}** | ≤ 1.10 {'✅' if a1['ratio'] <= 1.10 else '❌'} |",
        "",
    ]
    print("A2 ...", file=sys.stderr)
    methods = [("ap", {"site": site}), ("vpt-deep", {}), ("vapt", {}), ("linear", {})]
    a2 = bench(backbone, methods, batch=batch, img_size=size, steps=steps, threads=args.threads)
    by = {r["method"]: r for r in a2}
    cheaper = all(
        by["ap"]["step_seconds"]["median"] < by[m]["step_seconds"]["median"]
        and by["ap"]["memory_above_model_mib"] < by[m]["memory_above_model_mib"]
        for m in ("vpt-deep", "vapt")
    )
    out += [
        "**A2. AP vs VPT-deep vs VAPT at the same batch** (each method in a fresh process; memory is the",
        "peak resident set size above the built model)",
        "",
        table(a2),
        "",
        f"AP cheaper than VPT-deep and VAPT in step time and memory: {'✅ yes' if cheaper else '❌ no'}",
        "",
    ]
    print("A3 ...", file=sys.stderr)
    images = 256 if args.quick else 512
    cases = [
        (f"ViT-S/16 at {size} px, synthetic images, AP at `{site}`", backbone, site, size, None, False),
        (
            "EfficientNet-Lite0 (offline, pretrained) at 64 px, Fashion-MNIST, AP at `block.11`",
            "offline:efficientnet_lite0",
            "block.11",  # the 12th of 16 blocks
            64,
            "fashion-mnist",
            True,
        ),
    ]
    out += [
        f"**A3. Epoch time of AP three quarters deep, {images} training images** (second epoch of two; "
        "the cache is built once, before the first)",
        "",
        "| setting | uncached | cached | cache build | speed-up | target |",
        "|---|---|---|---|---|---|",
    ]
    for title, name, where, px, data, pretrained in cases:
        a3 = epoch_times(name, "ap", {"site": where}, px, images, pretrained=pretrained, data=data)
        speedup = a3["epoch_seconds_uncached"] / a3["epoch_seconds_cached"]
        out.append(
            f"| {title} | {a3['epoch_seconds_uncached']:.2f} s | {a3['epoch_seconds_cached']:.2f} s "
            f"| {a3['cache']['build_seconds']:.1f} s, {a3['cache']['mib']:.0f} MiB | **{speedup:.1f}×** "
            f"| ≥ 4× {'✅' if speedup >= 4 else '❌'} |"
        )
    out.append("")

    # ------------------------------------------------------------------------------------------ B
    if not args.quick:
        print("B ...", file=sys.stderr)
        methods = [
            ("linear", {}),
            ("vpt-deep", {}),
            ("vapt", {}),
            ("lora", {}),
            ("full", {}),
            ("ap", {"site": "block.9"}),
            ("ap", {"site": "block.11"}),
        ]
        b = bench("vit_base_patch16_224", methods, batch=4, img_size=224, steps=steps, threads=args.threads)
        vpt = next(r for r in b if r["method"] == "vpt-deep")
        rows = []
        for r in b:
            name = r["method"] + (f" ({r['options']['site']})" if "site" in r["options"] else "")
            ratio, official = r["step_vs_linear"], OFFICIAL.get(r["method"])
            target = TARGETS.get(r["method"])
            mem = r["memory_above_model_mib"]
            verdict = ""
            if target is not None:
                time_ok, mem_ok = ratio <= target, mem <= 0.8 * official[1]
                verdict = (
                    f"time ≤ {target}×: {'✅' if time_ok else '❌'}; "
                    f"memory ≤ {0.8 * official[1]:.0f} MiB: {'✅' if mem_ok else '❌'}"
                )
            elif r["method"] == "ap":
                vs = r["step_seconds"]["median"] / vpt["step_seconds"]["median"]
                verdict = f"{vs:.2f}× our VPT-deep step (target ≤ 0.6: {'✅' if vs <= 0.6 else '❌'})"
            rows.append(
                f"| {name} | {1e3 * r['step_seconds']['median']:.0f} | **{ratio:.2f}×** "
                f"| {official[0] if official else '-'}× | {mem:.0f} | {official[1] if official and official[1] else '-'} "
                f"| {verdict} |"
            )
        out += [
            "## B. SPEC §6 setting: ViT-B/16 at 224, batch 4, random weights, SGD",
            "",
            "| method | step ms | × linear probe | official × | memory above model (MiB) | official MiB | target |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Official figures are the ones quoted in the specification (same kind of machine); ours are",
            "measured here, in this run.",
            "",
        ]
    out.append(f"Total benchmark time: {(time.time() - started) / 60:.1f} min.")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
