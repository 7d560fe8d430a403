"""The family adapter interface and the generic fallback."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ...registry import Registry
from ..sites import Layout, SitePoint

#: one piece of a forward pass: the sites at its output, and the function (a module, so hooks fire)
Step = tuple[tuple[str, ...], Callable[[torch.Tensor], torch.Tensor]]


class Family:
    """Maps one model family's structure onto sites. Subclasses override the three methods."""

    name: str = "generic"
    #: methods that insert tokens (VPT, VAPT) need a plain ViT token sequence
    has_tokens: bool = False

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def points(self, model: nn.Module) -> dict[str, SitePoint]:
        """Sites between ``input`` and ``pre_logits``, in forward order."""
        return {}

    def token_info(self, model: nn.Module) -> tuple[int, tuple[int, int]] | None:
        """``(prefix_tokens, (grid_h, grid_w))`` for token families, else ``None``."""
        return None

    def token_pooling(self, model: nn.Module) -> str | None:
        """How the head pools a token model's last tokens, in timm's ``global_pool`` words: ``token`` (the
        class token), ``avg`` / ``max`` / ``avgmax`` (the tokens after the prefix), ``map`` (attention
        pooling), ``""`` (none); ``None`` for families without tokens."""
        return None

    def mlps(self, model: nn.Module) -> list[nn.Module]:
        """The MLP sub-module of every transformer block, for adapter-style methods."""
        return []

    def attentions(self, model: nn.Module) -> list[tuple[nn.Module, str]]:
        """Where every transformer block's self-attention sits, as ``(parent, attribute)``, for methods
        that wrap it (E²VPT's key-value prompts)."""
        return []

    def steps(self, model: nn.Module) -> list[Step]:
        """The forward pass from the input to the logits as steps, each tagged with the sites at its
        output. Running them in order equals ``model(x)``; running the ones after a site continues a
        forward pass from that site's activation (the frozen-prefix cache)."""
        return []


#: family name → adapter, in the order :func:`family_of` tries them; filled by :func:`register_family`
FAMILIES: Registry[Family] = Registry("model family")


def register_family(*, order: float = 0):
    """Class decorator: make a :class:`Family` subclass one of those tried on every model, by ``order``
    (lower first; the families' ``matches`` are disjoint, so only the generic one, last, needs one)."""

    def wrap(cls: type[Family]) -> type[Family]:
        FAMILIES.add(cls.name, cls(), order)
        return cls

    return wrap


@register_family(order=math.inf)  # matches anything: tried last
class GenericFamily(Family):
    """Any classifier: only ``input`` and ``pre_logits`` (enough for linear, full, VP, BitFit, norm, LoRA)."""

    name = "generic"

    def matches(self, model: nn.Module) -> bool:
        return True


def staged_points(
    embed: nn.Module | None, stages: Iterable[Iterable[nn.Module]], layout: Layout
) -> dict[str, SitePoint]:
    """``embed``, then ``block.N`` numbered flat across stages, then ``stage.N`` (= its last block).

    Stage sites are listed after the block sites; a stage's output is its last block's output.
    """
    points: dict[str, SitePoint] = {}
    if embed is not None:
        points["embed"] = SitePoint(embed, layout)
    stage_points = {}
    n = 0
    for s, stage in enumerate(stages):
        blocks = list(stage)
        for block in blocks:
            points[f"block.{n}"] = SitePoint(block, layout)
            n += 1
        stage_points[f"stage.{s}"] = SitePoint(blocks[-1], layout)
    points.update(stage_points)
    return points


def staged_steps(
    embed: Callable, stages: Iterable[tuple[Callable | None, Iterable[nn.Module]]], tail: Callable
) -> list[Step]:
    """Steps for ``embed``, then per stage an optional untagged ``downsample`` and its blocks (numbered
    flat across stages, the last one also tagged ``stage.N``), then ``tail`` (to the logits)."""
    steps: list[Step] = [(("embed",), embed)]
    n = 0
    for s, (downsample, blocks) in enumerate(stages):
        if downsample is not None:
            steps.append(((), downsample))
        blocks = list(blocks)
        for i, block in enumerate(blocks):
            steps.append(((f"block.{n}", f"stage.{s}") if i == len(blocks) - 1 else (f"block.{n}",), block))
            n += 1
    steps.append(((), tail))
    return steps


def classifier_name(model: nn.Module) -> str:
    """Dotted name of the final classifier module (timm's ``get_classifier()``, else the last Linear)."""
    target = model.get_classifier() if hasattr(model, "get_classifier") else None
    last_linear = None
    for name, module in model.named_modules():
        if target is not None and module is target:
            return name
        if isinstance(module, nn.Linear):
            last_linear = name
    if last_linear is None:
        raise ValueError(f"{type(model).__name__} has no classifier (no nn.Linear found)")
    return last_linear
