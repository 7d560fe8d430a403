"""Command-line options derived from config dataclasses: one ``--option`` per field, help from its metadata.

Defaults are ``None`` on the command line, so only options the user actually gave override a YAML file
or the dataclass defaults.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Literal


def _parts(tp) -> tuple[Any, bool]:
    """``(base type, optional?)`` of an annotation such as ``int | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def add_dataclass_options(parser, cls, skip: tuple[str, ...] = (), title: str | None = None) -> list[str]:
    """Add one option per field of dataclass ``cls``; returns the destination names added."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title) if title else parser
    added = []
    for f in fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        tp, _ = _parts(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is MISSING else f.default
        help_text = f.metadata.get("help", "")
        if typing.get_origin(tp) is dict:
            continue  # set from YAML or as individual method options
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is Literal:
            kwargs["choices"] = typing.get_args(tp)
        elif typing.get_origin(tp) is list:
            item = typing.get_args(tp)[0]
            kwargs.update(nargs="+", type=item, metavar={int: "N", float: "X"}.get(item, "VALUE"))
        else:
            kwargs["type"] = tp if tp in (int, float, str) else str
            kwargs["metavar"] = {int: "N", float: "X"}.get(tp, "VALUE")
        shown = default in ("", None, {}) or "default" in help_text  # nothing to show, or said already
        kwargs["help"] = (help_text + ("" if shown else f" (default: {default})")).strip()
        group.add_argument(flag, **kwargs)
        added.append(f.name)
    return added


def given(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The options among ``names`` that were given on the command line."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
