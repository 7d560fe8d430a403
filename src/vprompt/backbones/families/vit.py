"""Plain ViT (timm ``VisionTransformer``): ViT, DeiT, DINOv2, register-token variants.

Sites: ``embed`` (tokens after patch + position embedding, i.e. what enters block 0) and ``block.N``
(output of block N), all laid out as tokens ``(T, D)`` with ``T = prefix + h*w``.
"""

from __future__ import annotations

import functools

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..cls_only import ClsOnlyBlocks
from ..sites import SitePoint
from .base import Family, Step, register_family


@register_family()
class ViTFamily(Family):
    name = "vit"
    has_tokens = True

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def points(self, model: nn.Module) -> dict[str, SitePoint]:
        points = {"embed": SitePoint(model.norm_pre, "tokens")}
        for i, block in enumerate(model.blocks):
            points[f"block.{i}"] = SitePoint(block, "tokens")
        return points

    def token_info(self, model: nn.Module) -> tuple[int, tuple[int, int]]:
        h, w = model.patch_embed.grid_size
        return model.num_prefix_tokens, (int(h), int(w))

    def token_pooling(self, model: nn.Module) -> str:
        return "map" if getattr(model, "attn_pool", None) is not None else str(model.global_pool)

    def mlps(self, model: nn.Module) -> list[nn.Module]:
        return [block.mlp for block in model.blocks]

    def attentions(self, model: nn.Module) -> list[tuple[nn.Module, str]]:
        return [(block, "attn") for block in model.blocks]

    def steps(self, model: nn.Module) -> list[Step]:
        def embed(x):
            return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

        steps: list[Step] = [(("embed",), embed)]
        steps += [((f"block.{i}",), block) for i, block in enumerate(model.blocks)]
        if isinstance(model.blocks, ClsOnlyBlocks) and len(model.blocks):  # the CLS row alone, when exact
            steps[-1] = (steps[-1][0], model.blocks.last_block)
            for i, block in enumerate(list(model.blocks)[:-1]):  # and only the rows that are read
                steps[1 + i] = (steps[1 + i][0], functools.partial(model.blocks.run_block, block))
        steps.append(((), lambda x: model.forward_head(model.norm(x))))
        return steps
