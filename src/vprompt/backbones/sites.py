"""Sites: named places in a backbone where an activation can be read or changed.

A family adapter (``vprompt.backbones.families``) says *where* each site is (a module, and whether the
activation is that module's input or output). This module turns that into :class:`Site` objects with
a uniform verb, :meth:`Site.hook`, and measures each site's activation shape with one dry forward.
Methods only ever touch activations through sites.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

#: How an activation is laid out, without the batch axis.
#: ``tokens`` (T, D) · ``nchw`` (C, H, W) · ``nhwc`` (H, W, C) · ``vector`` (D,)
Layout = Literal["tokens", "nchw", "nhwc", "vector"]

#: A function that receives a site's activation and returns the activation to use instead
#: (or ``None`` to leave it unchanged).
ActivationFn = Callable[[torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class SitePoint:
    """Where a site lives: the activation is ``module``'s output (or its first positional input)."""

    module: nn.Module
    layout: Layout
    at: Literal["output", "input"] = "output"


@dataclass
class Site:
    """A named activation of a backbone, with its shape at the configured input size."""

    name: str
    point: SitePoint
    shape: tuple[int, ...] = ()
    #: position in forward order, 0 = ``input``
    index: int = 0
    #: ViT token sites only: number of prefix (CLS + register) tokens and the patch grid (h, w)
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    info: dict = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return self.point.layout

    @property
    def module(self) -> nn.Module:
        return self.point.module

    def hook(self, fn: ActivationFn) -> RemovableHandle:
        """Call ``fn`` on this site's activation at every forward; a returned tensor replaces it."""
        if self.point.at == "output":

            def forward_hook(_module, _args, output):
                return fn(output)

            return self.point.module.register_forward_hook(forward_hook)

        def pre_hook(_module, args):
            new = fn(args[0])
            if new is None:
                return None
            return (new, *args[1:])

        return self.point.module.register_forward_pre_hook(pre_hook)

    def describe(self) -> str:
        dims = {"tokens": "T×D", "nchw": "C×H×W", "nhwc": "H×W×C", "vector": "D"}[self.layout]
        return f"{self.name}: {'×'.join(map(str, self.shape))} ({dims})"


def measure_sites(
    model: nn.Module, points: dict[str, SitePoint], input_size: tuple[int, int, int]
) -> dict[str, Site]:
    """Build :class:`Site` objects, finding every activation shape with one dry forward (batch 1).

    Sites are returned in the order the forward pass reaches them.
    """
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    sites = {name: Site(name, point) for name, point in points.items()}
    for name, site in sites.items():

        def record(act: torch.Tensor, name: str = name) -> None:
            if not isinstance(act, torch.Tensor):
                raise TypeError(f"site {name!r} does not produce a tensor (got {type(act).__name__})")
            if name not in shapes:
                order.append(name)
                shapes[name] = tuple(act.shape[1:])

        handles.append(site.hook(record))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in points if n not in shapes]
    if missing:
        raise RuntimeError(f"sites never reached by the forward pass: {missing}")
    result = {}
    for index, name in enumerate(order):
        site = sites[name]
        site.shape = shapes[name]
        site.index = index
        result[name] = site
    return result
