"""Option values as their type hints say: the check shared by run options, saved configs and backbone arguments."""

from __future__ import annotations

from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin


def choices(annotation: Any) -> tuple:
    """The values a ``Literal`` annotation allows (``Literal[...] | None`` too); ``()`` for any other."""
    if get_origin(annotation) in (Union, UnionType):
        return next((choices(a) for a in get_args(annotation) if get_origin(a) is Literal), ())
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """``value`` as the type of option ``name`` (YAML reads ``1e-2`` as a string, ``5`` as an int ...),
    or a ValueError naming the option and what it expects."""
    union = get_origin(annotation) in (Union, UnionType)
    kinds = [a for a in get_args(annotation) if a is not type(None)] if union else [annotation]
    if value is None:
        if union and type(None) in get_args(annotation):
            return None
        raise ValueError(f"option {name!r} needs a value")
    kind = kinds[0]
    if get_origin(kind) is Literal:
        if value in get_args(kind):
            return value
        expected = f"one of {', '.join(map(str, get_args(kind)))}"
    elif kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        expected = "true or false"
    elif kind in (int, float):
        expected = "an integer" if kind is int else "a number"
        if not isinstance(value, bool) and isinstance(value, int | float | str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and (kind is float or number.is_integer()):
                return kind(number)
    elif kind is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        expected = "a string"
    elif get_origin(kind) is dict:
        if isinstance(value, dict):
            return dict(value)
        expected = "a mapping (option: value)"
    elif get_origin(kind) is list:
        if isinstance(value, list | tuple):
            return [coerce(name, v, get_args(kind)[0]) for v in value]
        expected = "a list"
    else:
        return value
    raise ValueError(f"option {name!r}: expected {expected}, got {value!r}")
