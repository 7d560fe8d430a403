"""``vprompt demo``: the main job on the built-in default (offline weights and data, no internet)."""

from __future__ import annotations

import argparse

import torch

DEFAULT_BACKBONE = "offline:efficientnet_lite0"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the built-in demo on offline weights and data")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"(default: {DEFAULT_BACKBONE})")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform

    from ..backbones import create_backbone
    from ..data import foolbox_imagenet

    bb = create_backbone(args.backbone).eval()
    print(f"== {bb.name}: {bb.source}")
    print(f"   family {bb.family.name}, input {'×'.join(map(str, bb.input_size))}\n")
    print(bb.sites_table())
    transform = create_transform(**bb.data_config)
    names = ImageNetInfo()
    images = foolbox_imagenet()
    batch = []
    for path, _ in images:
        with Image.open(path) as im:
            batch.append(transform(im.convert("RGB")))
    with torch.no_grad():
        predictions = bb(torch.stack(batch)).argmax(-1).tolist()
    print(f"\n== ImageNet top-1 on the {len(images)} foolbox validation photos")
    correct = 0
    for (path, label), pred in zip(images, predictions, strict=True):
        correct += pred == label
        mark = "ok " if pred == label else "MISS"
        print(f"   {mark} {path.name:<24} {names.index_to_description(pred)}")
    print(f"   {correct}/{len(images)} correct")
    return 0
