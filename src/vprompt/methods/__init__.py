"""Methods: what is trained and where. One file per method; this module is their registry.

The model around a method (``attach``, ``TunedModel``, saving and loading) is :mod:`vprompt.model`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .aap import AdaptiveActivationPrompt
from .adapter import Adapter
from .ap import ActivationPrompt, APConfig
from .base import Method, MethodConfig, MethodNotApplicable
from .baselines import BitFit, FullFineTuning, LinearProbe, NormTuning
from .gatevpt import GateVPT
from .lora import LoRA
from .vapt import VAPT
from .vp import ExpansivePrompt, PadPrompt
from .vpt import VPTDeep, VPTShallow

_METHODS: list[type[Method]] = [
    LinearProbe,
    FullFineTuning,
    ActivationPrompt,
    AdaptiveActivationPrompt,
    PadPrompt,
    ExpansivePrompt,
    VPTShallow,
    VPTDeep,
    VAPT,
    GateVPT,
    NormTuning,
    BitFit,
    LoRA,
    Adapter,
]

#: name -> method class, in the order ``vprompt methods`` lists them
METHODS: dict[str, type[Method]] = {m.name: m for m in _METHODS}
#: methods acting at one site with AP's ``site`` and ``shape`` options (what ``sweep layers`` moves)
SITE_METHODS: list[str] = [m.name for m in _METHODS if issubclass(m.config_class, APConfig)]


def method_config(name: str, **options: Any) -> MethodConfig:
    """The config of method ``name`` with ``options``; unknown names or options list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    config_class = METHODS[name].config_class
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
    "Method",
    "MethodConfig",
    "MethodNotApplicable",
    "method_config",
]
