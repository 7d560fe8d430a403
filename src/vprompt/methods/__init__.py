"""Methods: what is trained and where. One file per method, each registering itself (``@register_method``).

The model around a method (``attach``, ``TunedModel``, saving and loading) is :mod:`vprompt.model`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from . import (  # noqa: F401  (each file registers its methods with @register_method)
    aap,
    adapter,
    ap,
    baselines,
    e2vpt,
    gatevpt,
    lora,
    ssf,
    vapt,
    vp,
    vpt,
)
from .ap import APConfig
from .base import METHODS, Method, MethodConfig, MethodNotApplicable, register_method

#: methods acting at one site with AP's ``site`` and ``shape`` options (what ``sweep layers`` moves)
SITE_METHODS: list[str] = [m.name for m in METHODS.values() if issubclass(m.config_class, APConfig)]
#: the method the tools measure the others against (``Method.reference``)
REFERENCE_METHOD: str = next(m.name for m in METHODS.values() if m.reference)


def method_config(name: str, **options: Any) -> MethodConfig:
    """The config of method ``name`` with ``options``; unknown names or options list the valid ones."""
    config_class = METHODS.choose(name).config_class
    valid = [f.name for f in fields(config_class)]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(
            f"method {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(valid) or '(none)'}"
        )
    return config_class(**options)


__all__ = [
    "METHODS",
    "SITE_METHODS",
    "REFERENCE_METHOD",
    "Method",
    "MethodConfig",
    "MethodNotApplicable",
    "method_config",
    "register_method",
]
