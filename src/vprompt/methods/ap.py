"""Activation prompts (AP): one learned perturbation, shared by all inputs, added to a site's activation.

Zhang et al., "Visual Prompting Reimagined: The Power of Activation Prompts" (AISTATS 2026). Zero-init, in
the shapes ``full``, ``channel`` and ``spatial``.
Design notes: ``docs/design.md``, section ``vprompt/methods/ap.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..backbones import Backbone
from .base import Method, MethodConfig, MethodNotApplicable, register_method


@dataclass
class APConfig(MethodConfig):
    site: str = field(
        default="", metadata={"help": "site whose activation is prompted, e.g. block.6 (see `vprompt sites`)"}
    )
    shape: Literal["full", "channel", "spatial"] = field(
        default="full", metadata={"help": "prompt shape: full activation, per channel, or per position"}
    )


def prompt_shape(layout: str, shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The prompt's shape for an activation of ``shape`` (batch excluded) laid out as ``layout``."""
    if kind == "full":
        return shape
    channel_axis = {"tokens": 1, "nchw": 0, "nhwc": 2, "vector": 0}[layout]
    if kind == "channel":
        return tuple(n if i == channel_axis else 1 for i, n in enumerate(shape))
    if kind == "spatial":
        if layout == "vector":
            raise MethodNotApplicable("a spatial prompt needs a spatial site; pre_logits is a vector")
        return tuple(1 if i == channel_axis else n for i, n in enumerate(shape))
    raise MethodNotApplicable(f"unknown AP shape {kind!r}; choose full, channel or spatial")


@register_method(order=30)
class ActivationPrompt(Method):
    name = "ap"
    summary = "activation prompt: a zero-initialised tensor added to one site's activation"
    config_class = APConfig

    def attach(self, backbone: Backbone) -> None:
        if not self.config.site:
            raise MethodNotApplicable(
                f"{self.name} needs a site; {backbone.name!r} has: {', '.join(backbone.sites)}"
            )
        site = backbone.site(self.config.site)
        self.prompt = nn.Parameter(torch.zeros(prompt_shape(site.layout, site.shape, self.config.shape)))
        self.hook(backbone, site.name, self.add)

    def first_site(self, backbone: Backbone) -> str:
        return self.config.site

    def add(self, activation: torch.Tensor) -> torch.Tensor:
        return activation + self.prompt
