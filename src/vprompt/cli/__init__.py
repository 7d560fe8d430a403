"""The ``vprompt`` command line: one sub-command per tool, each defined in its own module."""

from __future__ import annotations

import argparse
import sys

from . import backbones as _backbones
from . import bench as _bench
from . import data as _data
from . import demo as _demo
from . import methods as _methods
from . import recipes as _recipes
from . import report as _report
from . import runs as _runs
from . import sweep as _sweep
from . import train as _train

#: Modules that contribute sub-commands; each has ``register(subparsers)``.
COMMAND_MODULES = (_backbones, _methods, _recipes, _data, _train, _runs, _sweep, _report, _bench, _demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vprompt",
        description="Adapt frozen pretrained vision models with activation prompts, VAPT and PETL baselines.",
    )
    parser.add_argument("--version", action="version", version=f"vprompt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_method_options", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "accepts_method_options", False):
            return args.func(args, extra) or 0
        return args.func(args) or 0
    except (
        ValueError,
        KeyError,
        FileNotFoundError,
        FileExistsError,
        RuntimeError,
    ) as e:  # MethodNotApplicable too
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vprompt {args.command}: error: {message}", file=sys.stderr)
        return 2


def _version() -> str:
    from .. import __version__

    return __version__
