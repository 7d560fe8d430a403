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


class _Captured(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a tap to stop a forward pass once the wanted activation is reached."""

    def __init__(self, activation: torch.Tensor):
        self.activation = activation


class HookChain:
    """The functions hooked at one module's output (or input), run in order by a single torch hook.

    Every site at the same place (``stage.N`` and its last ``block.M``) shares one chain, so the
    functions can also be applied outside a forward pass (:meth:`Site.apply`, for cached activations).
    """

    def __init__(self, module: nn.Module, at: str):
        self.module, self.at = module, at
        self.fns: list[ActivationFn] = []
        self._handle: RemovableHandle | None = None

    def __call__(self, activation: torch.Tensor) -> torch.Tensor:
        for fn in list(self.fns):
            new = fn(activation)
            if new is not None:
                activation = new
        return activation

    def add(self, fn: ActivationFn, first: bool = False) -> _ChainHandle:
        self.fns.insert(0, fn) if first else self.fns.append(fn)
        if self._handle is None:
            if self.at == "output":
                self._handle = self.module.register_forward_hook(lambda _m, _a, out: self(out))
            else:
                self._handle = self.module.register_forward_pre_hook(
                    lambda _m, args: (self(args[0]), *args[1:])
                )
        return _ChainHandle(self, fn)

    def remove(self, fn: ActivationFn) -> None:
        if fn in self.fns:
            self.fns.remove(fn)
        if not self.fns and self._handle is not None:
            self._handle.remove()
            self._handle = None
            chains = _chains_of(self.module)
            chains.pop(self.at, None)
            if not chains and CHAINS_ATTR in vars(self.module):
                delattr(self.module, CHAINS_ATTR)


class _ChainHandle:
    """Removes one function from its chain (the torch hook goes when the chain is empty)."""

    def __init__(self, chain: HookChain, fn: ActivationFn):
        self.chain, self.fn = chain, fn

    def remove(self) -> None:
        self.chain.remove(self.fn)


#: the attribute under which a module keeps its chains (``{"output" | "input": HookChain}``). On the
#: module, not in a global registry: a compiled forward then guards on this module's own chains only
#: (a global weak registry made dynamo guard on every hooked module's entry, and a module collected
#: between tracing and guard building broke the guards).
CHAINS_ATTR = "_vprompt_site_chains"


def _chains_of(module: nn.Module, create: bool = False) -> dict[str, HookChain]:
    chains = getattr(module, CHAINS_ATTR, None)
    if chains is None:
        chains = {}
        if create:
            object.__setattr__(module, CHAINS_ATTR, chains)
    return chains


def _chain(point: SitePoint, create: bool) -> HookChain | None:
    chains = _chains_of(point.module, create)
    if create and point.at not in chains:
        chains[point.at] = HookChain(point.module, point.at)
    return chains.get(point.at)


def hooked_functions(module: nn.Module, at: str = "output") -> list[ActivationFn]:
    """The functions hooked (through sites) at ``module``'s output or input, in the order they run."""
    chain = _chains_of(module).get(at)
    return list(chain.fns) if chain is not None else []


def chain_hook_ids(module: nn.Module) -> set[int]:
    """The ids of the torch hooks on ``module`` that run site chains (keys of its hook dicts)."""
    return {c._handle.id for c in _chains_of(module).values() if c._handle is not None}


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

    def hook(self, fn: ActivationFn) -> _ChainHandle:
        """Call ``fn`` on this site's activation at every forward; a returned tensor replaces it."""
        return _chain(self.point, create=True).add(fn)

    def apply(self, activation: torch.Tensor) -> torch.Tensor:
        """Apply the functions hooked here to ``activation`` (as the forward pass would)."""
        chain = _chain(self.point, create=False)
        return chain(activation) if chain is not None else activation

    def capture(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The raw activation here (before any hooked function) for input ``x``; the rest of the
        forward pass is not run."""
        handle = _chain(self.point, create=True).add(_stop, first=True)
        try:
            model(x)
        except _Captured as captured:
            return captured.activation
        finally:
            handle.remove()
        raise RuntimeError(f"site {self.name!r} was not reached by the forward pass")

    def describe(self) -> str:
        dims = {"tokens": "T×D", "nchw": "C×H×W", "nhwc": "H×W×C", "vector": "D"}[self.layout]
        return f"{self.name}: {'×'.join(map(str, self.shape))} ({dims})"


def _stop(activation: torch.Tensor) -> None:
    raise _Captured(activation)


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
