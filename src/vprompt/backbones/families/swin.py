"""Swin Transformer (timm ``SwinTransformer`` and ``SwinTransformerV2``).

timm's Swin keeps activations channels-last, so every site is ``(H, W, C)``. Sites: ``embed`` (patch
embedding), ``block.N`` (numbered across stages), ``stage.N``.
"""

from __future__ import annotations

from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from torch import nn

from ..sites import SitePoint
from .base import Family, Step, register_family, staged_points, staged_steps


@register_family()
class SwinFamily(Family):
    name = "swin"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer | SwinTransformerV2)

    def points(self, model: nn.Module) -> dict[str, SitePoint]:
        return staged_points(model.patch_embed, (stage.blocks for stage in model.layers), "nhwc")

    def mlps(self, model: nn.Module) -> list[nn.Module]:
        return [block.mlp for stage in model.layers for block in stage.blocks]

    def steps(self, model: nn.Module) -> list[Step]:
        stages = [(stage.downsample, stage.blocks) for stage in model.layers]
        return staged_steps(model.patch_embed, stages, lambda x: model.forward_head(model.norm(x)))
