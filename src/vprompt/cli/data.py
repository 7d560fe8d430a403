"""``vprompt data check``: verify a prepared dataset before training on it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect and verify datasets")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    c = data_sub.add_parser(
        "check",
        help="verify a prepared dataset: files present, images decodable, labels in range, split sizes",
    )
    c.add_argument(
        "spec", help="vtab1k:<task>, fgvc:<name>, vp:<name>, torchvision:<Class>, folder:<path>, ..."
    )
    c.add_argument("--root", default=None, help="data root (see the README for each family's layout)")
    c.add_argument("--split", action="append", default=None, help="check only this split (repeatable)")
    c.add_argument(
        "--quick",
        action="store_true",
        help="decode only a sample of images per split (what training runs do)",
    )
    c.add_argument("--sample", type=int, default=8, help="images decoded per split with --quick")
    c.add_argument(
        "--images-outside-root",
        action="store_true",
        help="accept split-list entries that point outside the dataset folder (refused by default)",
    )
    c.add_argument(
        "--list",
        action="store_true",
        help="also print every image each split uses, one per line: split, class, path",
    )
    c.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from ..data import check_dataset
    from ..data.checks import split_files
    from ..data.sources import resolve

    report = check_dataset(
        args.spec,
        args.root,
        splits=args.split,
        full=not args.quick,
        sample=args.sample,
        allow_outside_root=args.images_outside_root,
    )
    print(report.summary())
    source = resolve(args.spec, args.root, allow_outside_root=args.images_outside_root)
    hold_out = getattr(source, "hold_out", None)
    if hold_out is not None and getattr(source, "layout", None) == "single":
        print(
            f"val and test are held out of every class of the pool: val {hold_out['val']:g}, test "
            f"{hold_out['test']:g}, seed {hold_out['seed']} (change with folder:<path>?val=..&test=..&seed=..)"
        )
    if args.list and report.ok:
        for split, files in split_files(source, args.split or [s.split for s in report.splits]).items():
            for name, path in files:
                print(f"{split}\t{name}\t{path}")
    return 0 if report.ok else 1
