"""``vprompt methods``: the method catalogue, one line each, with the families each supports."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the adaptation methods and their options")
    p.add_argument("--options", action="store_true", help="also list each method's options")
    p.set_defaults(func=cmd_methods)


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import METHODS

    width = max(map(len, METHODS))
    for name, method in METHODS.items():
        print(f"{name:<{width}}  {method.summary}  [families: {method.families}]")
        if args.options:
            for f in fields(method.config_class):
                default = f.default if f.default is not MISSING else f.default_factory()
                print(
                    f"{'':<{width}}    --{f.name.replace('_', '-')} (default {default!r}): {f.metadata.get('help', '')}"
                )
    return 0
