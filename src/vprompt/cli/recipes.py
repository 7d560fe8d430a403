"""``vprompt recipes [NAME]``: the shipped recipes, one line each, or one recipe's file in full."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes",
        help="the papers' training recipes (use one with --recipe NAME on train and sweep)",
        description="List the named recipes, or show one (its values and the files they come from).",
    )
    p.add_argument("name", nargs="?", default=None, help="a recipe to show in full")
    p.set_defaults(func=cmd_recipes)


def cmd_recipes(args: argparse.Namespace) -> int:
    from .. import recipes

    if args.name is not None:
        print(recipes.text(args.name), end="")
        return 0
    rows = [(r.name, ", ".join(r.methods), r.summary) for r in map(recipes.load, recipes.names())]
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    print(f"{'recipe':<{width[0]}}  {'methods':<{width[1]}}  what")
    for name, methods, summary in rows:
        print(f"{name:<{width[0]}}  {methods:<{width[1]}}  {summary}")
    print("\nvprompt recipes NAME shows one; use it as --recipe NAME (explicit options win).")
    return 0
