"""Family adapters: one small file per model family maps its structure onto named sites.

Adding a family is adding one file with a :class:`Family` subclass decorated with ``@register_family``
and importing it below.
Every family gets ``input`` (the pixels entering the model) and ``pre_logits`` (the pooled feature
entering the classifier) for free; a family adds what lies between: ``embed``, ``block.N``,
``stage.N``.
"""

from __future__ import annotations

from torch import nn

from ..sites import SitePoint
from . import (  # noqa: F401  (each file registers its family with @register_family)
    convnext,
    efficientnet,
    resnet,
    swin,
    vit,
)
from .base import FAMILIES, Family, classifier_name, register_family


def family_of(model: nn.Module) -> Family:
    """The first family adapter that recognises ``model`` (the generic one if none does)."""
    return next(f for f in FAMILIES.values() if f.matches(model))


def site_points(model: nn.Module, family: Family, head_name: str) -> dict[str, SitePoint]:
    """All site points of ``model``: ``input``, the family's own, then ``pre_logits`` (the head's input)."""
    points = {"input": SitePoint(model, "nchw", at="input")}
    points.update(family.points(model))
    points["pre_logits"] = SitePoint(model.get_submodule(head_name), "vector", at="input")
    return points


__all__ = ["FAMILIES", "Family", "classifier_name", "family_of", "register_family", "site_points"]
