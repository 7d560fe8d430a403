"""``vprompt report DIR...``: tables (markdown, CSV) and plots from any set of run directories."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="markdown/CSV tables (dataset × method, mean ± std) and plots from run directories",
        description="Collect every finished run under the given folders: tables of accuracy (mean ± std over "
        "seeds) and cost per configuration, layer preference and accuracy-vs-cost plots.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders searched for run directories")
    p.add_argument("--output", type=Path, default=None, help="report folder (default: <first DIR>/report)")
    p.add_argument(
        "--plot-format",
        default="png",
        help="comma-separated figure formats: png, pdf, svg (default: png), e.g. png,pdf",
    )
    p.add_argument(
        "--plot-size", default=None, metavar="WxH", help="inches per panel (default: 6.4x4.2), e.g. 3.5x2.6"
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..tools.report import write_report

    out = args.output or args.dirs[0] / "report"
    size = None
    if args.plot_size:
        try:
            width, height = (float(v) for v in args.plot_size.lower().split("x"))
        except ValueError:
            raise ValueError(
                f"--plot-size {args.plot_size!r}: expected WIDTHxHEIGHT in inches, e.g. 3.5x2.6"
            ) from None
        size = (width, height)
    formats = tuple(f.strip().lower() for f in args.plot_format.split(",") if f.strip())
    result = write_report(args.dirs, out, formats=formats, size=size)
    runs = sum(r["n"] for r in result["rows"])
    print(f"{runs} runs in {len(result['rows'])} configurations; {len(result['failed'])} failed runs")
    for path in result["files"].values():
        print(f"wrote {path}")
    return 0
