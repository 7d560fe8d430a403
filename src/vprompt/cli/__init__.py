"""The ``vprompt`` command line: one sub-command per tool, each defined in its own module."""

from __future__ import annotations

import argparse
import sys

from . import analyze as _analyze
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
COMMAND_MODULES += (_analyze,)  # vprompt analyze


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vprompt",
        description="Adapt frozen pretrained vision models with activation prompts, VAPT and PETL baselines.",
    )
    parser.add_argument("--version", action="version", version=f"vprompt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    for command in [parser, *sub.choices.values()]:  # `--r` must not silently mean `--resume` or `--root`
        command.allow_abbrev = False
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
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        print(f"vprompt {args.command}: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, RuntimeError) as e:  # MethodNotApplicable, WriteError too
        print(f"vprompt {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2


def error_line(e: BaseException) -> str:
    """One printable line for an error: OS errors with their file, DataLoader-worker errors without the
    worker's traceback, and file names that are not valid UTF-8 escaped instead of crashing the print."""
    if isinstance(e, KeyError) and e.args:
        text = f"missing {e.args[0]!r}"
    elif isinstance(e, OSError) and not isinstance(e, FileNotFoundError | FileExistsError) and e.strerror:
        text = e.strerror + (f": {e.filename}" if e.filename and str(e.filename) not in e.strerror else "")
    else:
        text = str(e) or type(e).__name__
        if isinstance(e, FileNotFoundError | FileExistsError) and e.strerror and e.filename:
            text = f"{e.strerror}: {e.filename}"
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original message
        text = [line for line in text.splitlines() if line.strip()][-1]
        kind, _, rest = text.partition(": ")
        if rest and all(part.isidentifier() for part in kind.split(".")):  # "pkg.module.DataError: ..."
            text = rest
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _version() -> str:
    from .. import __version__

    return __version__
