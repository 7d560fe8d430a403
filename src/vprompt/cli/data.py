"""``vprompt data check`` verifies a prepared dataset; ``vprompt data prepare vtab1k`` builds VTAB-1k."""

from __future__ import annotations

import argparse
import sys


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
    c.add_argument("--root", default=None, help="data root (docs/guide.md, Data, gives each family's layout)")
    c.add_argument("--split", action="append", default=None, help="check only this split (repeatable)")
    c.add_argument(
        "--quick",
        action="store_true",
        help="decode only a sample of images per split (what training runs do)",
    )
    c.add_argument("--sample", type=int, default=8, help="images decoded per split with --quick")
    c.add_argument("--image-column", default=None, help="hf: data: the image column")
    c.add_argument("--label-column", default=None, help="hf: data: the label column")
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

    p = data_sub.add_parser(
        "prepare",
        help="build a dataset in the layout vprompt reads (vtab1k: the 19 tasks from TensorFlow Datasets)",
        description="Build <out>/<task>/{train800,val200,train800val200,test}.txt + images from TFDS with the "
        "official VTAB-1k definitions. Finished tasks are skipped, an interrupted one is redone; needs "
        "pip install 'vprompt[prepare]'.",
    )
    p.add_argument("dataset", choices=["vtab1k"], help="what to prepare")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", dest="out", help="the data root to write (then: --root for vtab1k:<task>)")
    out.add_argument("--out", dest="out", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument(
        "--tasks", action="append", default=None, help="only these tasks (comma-separated or repeated)"
    )
    p.add_argument(
        "--tfds-dir",
        default=None,
        help="TFDS data folder (default $TFDS_DATA_DIR or ~/tensorflow_datasets); manual downloads go in "
        "<tfds-dir>/downloads/manual/",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)


def cmd_check(args: argparse.Namespace) -> int:
    from ..data import check_dataset
    from ..data.checks import split_files
    from ..data.sources import resolve
    from ..data.sources.hf import with_columns

    spec = with_columns(args.spec, args.image_column, args.label_column)
    report = check_dataset(
        spec,
        args.root,
        splits=args.split,
        full=not args.quick,
        sample=args.sample,
        allow_outside_root=args.images_outside_root,
    )
    print(report.summary())
    source = resolve(spec, args.root, allow_outside_root=args.images_outside_root)
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


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare_vtab1k

    try:
        outcomes = prepare_vtab1k(args.out, args.tasks, args.tfds_dir, progress=not args.no_progress)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = [o for o in outcomes if not o.ok]
    done = len(outcomes) - len(bad)
    print(f"{done}/{len(outcomes)} task(s) ready in {args.out}")
    for o in bad:
        print(f"  {o.task}: {o.status}")
    return 0 if not bad else 1
