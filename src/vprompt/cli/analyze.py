"""``vprompt analyze layers``: per site of a backbone (or a trained run), linear CKA to the final
representation and to the previous site, ViT attention distance and the effective receptive field
(see :mod:`vprompt.tools.analyze`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .backbones import add_backbone_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="analyse a backbone's features per site (CKA, attention distance, ERF)"
    )
    kinds = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    k = kinds.add_parser(
        "layers",
        allow_abbrev=False,
        help="per site: linear CKA to pre_logits and to the previous site, attention distance, ERF radius",
        description="Per site of a backbone, on images of a dataset: linear CKA (centred Gram matrices of "
        "the features flattened per image, or averaged over positions with --pool mean) to the final "
        "representation (pre_logits) and to the previous site; for ViT blocks the mean attention "
        "distance (patch queries and keys, CLS and register tokens left out); for every spatial site "
        "the radius holding 50%% / 90%% of the input-gradient mass of its central position (effective "
        "receptive field). With --run: prompted (the run's model) and plain (its backbone alone).",
    )
    add_backbone_args(k, help="timm name, torchvision:<name> or offline:<name> (not with --run)")
    k.add_argument("--data", default=None, help="data spec (default with --run: the run's dataset)")
    k.add_argument("--root", default=None, help="data root (docs/guide.md, Data)")
    k.add_argument("--split", default="test", help="split whose images are analysed (default: test)")
    k.add_argument("--images", type=int, default=256, help="images for CKA and attention (default: 256)")
    k.add_argument(
        "--erf-images",
        type=int,
        default=32,
        help="of those, images for the receptive field (default: 32; 0: none)",
    )
    k.add_argument("--sites", nargs="+", default=None, help="sites (default: embed and every block.N)")
    k.add_argument(
        "--pool",
        choices=("flatten", "mean"),
        default="flatten",
        help="features per image for CKA: every value (flatten, default) or the mean over positions",
    )
    k.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    k.add_argument("--seed", type=int, default=0, help="seed of the image subset (default: 0)")
    k.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1")
    k.add_argument("--run", type=Path, default=None, help="a finished run: its prompted and plain features")
    k.add_argument(
        "--output", type=Path, default=Path("analysis"), help="folder for layer-analysis.{md,json,csv}"
    )
    k.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)
    k.set_defaults(func=cmd_layers)


def cmd_layers(args: argparse.Namespace) -> int:
    from ..engine.distributed import resolve_device
    from ..tools import analyze

    options = dict(
        images=args.images,
        erf_images=args.erf_images,
        sites=args.sites,
        pool=args.pool,
        batch_size=args.batch_size,
        root=args.root,
        split=args.split,
        seed=args.seed,
    )
    device = str(resolve_device(args.device))
    if args.run is not None:
        if args.backbone is not None:
            raise ValueError(
                "give a BACKBONE (or --backbone) or --run, not both (the run names its backbone)"
            )
        result = analyze.analyze_run(args.run, args.data, device=device, **options)
    else:
        if args.backbone is None:
            raise ValueError("name a BACKBONE (or --backbone BACKBONE, or a finished run with --run)")
        if args.data is None:
            raise ValueError("--data is needed (a data spec, e.g. mnist-5k or vtab1k:cifar)")
        from .backbones import build_backbone

        backbone = build_backbone(args).to(device)
        result = analyze.layer_features(backbone, args.data, **options)
    files = analyze.write(result, args.output)
    print(analyze.table(result))
    print(f"written to {files['md']}, {Path(files['json']).name}, {Path(files['csv']).name}")
    return 0
