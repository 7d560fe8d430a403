"""ConvNeXt (timm ``ConvNeXt``). Sites (``C×H×W``): ``embed`` (stem), ``block.N``, ``stage.N``."""

from __future__ import annotations

from timm.models.convnext import ConvNeXt
from torch import nn

from ..sites import SitePoint
from .base import Family, Step, register_family, staged_points, staged_steps


@register_family()
class ConvNeXtFamily(Family):
    name = "convnext"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, ConvNeXt)

    def points(self, model: nn.Module) -> dict[str, SitePoint]:
        return staged_points(model.stem, (stage.blocks for stage in model.stages), "nchw")

    def steps(self, model: nn.Module) -> list[Step]:
        stages = [(stage.downsample, stage.blocks) for stage in model.stages]
        return staged_steps(model.stem, stages, lambda x: model.forward_head(model.norm_pre(x)))
