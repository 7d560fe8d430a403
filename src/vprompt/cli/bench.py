"""``vprompt bench``: trainable parameters, step time (next to its bounds), memory and throughput of
several methods."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ..tools.bench import DEFAULT_METHODS

    p = sub.add_parser(
        "bench",
        help="efficiency table (and json, and a plot) of methods on one backbone",
        description="Per method, in a fresh process: trainable parameters, train-step time, peak memory, "
        "inference throughput. Each step time is also given as a multiple of the bare backbone's "
        "inference forward (× forward) and of the method's floor (× floor: the frozen prefix's forward "
        "up to its first trained site plus the forward, backward and update of the rest; '-' where the "
        "backbone cannot resume there), measured in the same process at the same batch.",
    )
    p.add_argument(
        "--backbone",
        required=True,
        help="timm name, torchvision:<name>, offline:<name>, mae:<vit> or mocov3:<file>",
    )
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated, each name[:option=value...], e.g. ap:site=block.9 "
        f"(default: {DEFAULT_METHODS}; ap without a site goes three quarters deep)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default: 8)")
    p.add_argument("--batch", dest="batch_size", type=int, help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's)")
    p.add_argument("--steps", type=int, default=10, help="timed train steps per method (default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    p.add_argument(
        "--random-init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random backbone weights (default here: yes; --no-random-init loads the pretrained ones)",
    )
    p.add_argument(  # the old spelling of --no-random-init
        "--pretrained", dest="random_init", action="store_false", help=argparse.SUPPRESS
    )
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--epoch-images",
        type=int,
        default=0,
        help="also time a training epoch on this many synthetic images (at --batch-size), with and without "
        "the prefix cache, and give the cache's speed-up next to its bound",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="as for training: auto = bf16 on a GPU that has it, fp32 on a CPU; bf16 on a CPU with native bf16",
    )
    p.add_argument("--output", type=Path, default=Path("bench-out"), help="folder for bench.{md,json,png}")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..engine.distributed import resolve_device
    from ..tools.bench import bench, last_block_notes, parse_methods, table, write

    rows = bench(
        args.backbone,
        parse_methods(args.methods),
        batch=args.batch_size,
        img_size=args.img_size,
        steps=args.steps,
        warmup=args.warmup,
        pretrained=not args.random_init,
        device=str(resolve_device(args.device)),
        threads=args.threads,
        epoch_images=args.epoch_images,
        precision=args.precision,
    )
    size = "×".join(map(str, rows[0]["input_size"]))
    title = (
        f"{args.backbone}, {size}, batch {args.batch_size}, {rows[0]['device']}, {rows[0]['precision']}, "
        f"{rows[0]['threads']} threads"
    )
    write(rows, args.output, title)
    print(title)
    print(table(rows))
    if notes := last_block_notes(rows):
        print(notes)
    print(f"written to {args.output}/bench.{{md,json,png}}")
    return 0
