"""``vprompt demo``: the main job on the built-in default (offline weights and data, no internet).

1. the offline EfficientNet-Lite0 classifies the 20 real ImageNet photos shipped with foolbox (its
   weights are real), 2. every kind of method adapts it to Fashion-MNIST, 3. a table and a report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def register(sub: argparse._SubParsersAction) -> None:
    from ..tools.demo import Budget

    b = Budget()
    p = sub.add_parser("demo", help="compare the methods on offline EfficientNet-Lite0 + Fashion-MNIST")
    p.add_argument("--output", type=Path, default=Path("demo-out"), help="(default: demo-out)")
    p.add_argument("--fresh", action="store_true", help="train again instead of reusing finished runs")
    p.add_argument("--train-size", type=int, default=b.train_size, help=f"(default: {b.train_size})")
    p.add_argument("--eval-size", type=int, default=b.eval_size, help=f"(default: {b.eval_size})")
    p.add_argument("--img-size", type=int, default=b.img_size, help=f"(default: {b.img_size})")
    p.add_argument("--epochs", type=int, default=b.epochs, help=f"(default: {b.epochs})")
    p.add_argument("--methods", default=None, help="comma-separated subset of the demo's methods")
    p.set_defaults(func=cmd_demo)


def imagenet_check(backbone: str) -> str:
    """Top-1 of ``backbone``'s own ImageNet head on the 20 foolbox photos."""
    from PIL import Image
    from timm.data import create_transform

    from ..backbones import create_backbone
    from ..data import foolbox_imagenet

    bb = create_backbone(backbone).eval()
    transform = create_transform(**bb.data_config)
    images = foolbox_imagenet()
    batch = []
    for path, _ in images:
        with Image.open(path) as im:
            batch.append(transform(im.convert("RGB")))
    with torch.no_grad():
        predictions = bb(torch.stack(batch)).argmax(-1).tolist()
    correct = sum(p == label for p, (_, label) in zip(predictions, images, strict=True))
    return f"{correct}/{len(images)}"


def cmd_demo(args: argparse.Namespace) -> int:
    from ..tools.demo import BACKBONE, METHODS, Budget, describe, results_table, run_demo

    budget = Budget(args.train_size, args.eval_size, args.img_size, args.epochs)
    methods = METHODS
    if args.methods:
        wanted = args.methods.split(",")
        unknown = [m for m in wanted if m not in {m[0] for m in METHODS}]
        if unknown:
            raise ValueError(
                f"the demo has no method {unknown}; its methods: {', '.join(m[0] for m in METHODS)}"
            )
        methods = [m for m in METHODS if m[0] in wanted]
    print(f"== {BACKBONE}: ImageNet top-1 on the 20 real validation photos shipped with foolbox: ", end="")
    print(imagenet_check(BACKBONE), flush=True)
    print(f"\n== {describe(budget)}", flush=True)
    rows = run_demo(args.output, budget, methods, fresh=args.fresh)
    print()
    print(results_table(rows))
    print(f"\nreport: {args.output / 'README.md'} and {args.output / 'report' / 'report.md'} (with plots)")
    return 0
