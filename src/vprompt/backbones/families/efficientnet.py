"""EfficientNet / MobileNet: timm ``EfficientNet`` and ``MobileNetV3`` (EfficientNet, EfficientNet-Lite,
MobileNetV2/V3, MNASNet, ...), torchvision ``MobileNetV2``, ``MobileNetV3`` and ``EfficientNet``.

Sites (``C×H×W``): ``embed`` (stem conv + norm), ``block.N`` (inverted-residual blocks numbered across
stages), ``stage.N``. timm groups blocks into stages itself; torchvision's MobileNets keep a flat list,
where a new stage starts whenever a block changes the channel count.
"""

from __future__ import annotations

import timm.models.efficientnet
import timm.models.mobilenetv3
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from ..sites import SitePoint
from .base import Family, Step, register_family, staged_points, staged_steps

_TIMM = (timm.models.efficientnet.EfficientNet, timm.models.mobilenetv3.MobileNetV3)
_TORCHVISION = (tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet)


def _group_by_channels(blocks: list[nn.Module]) -> list[list[nn.Module]]:
    stages: list[list[nn.Module]] = []
    channels = None
    for block in blocks:
        if block.out_channels != channels:
            stages.append([])
            channels = block.out_channels
        stages[-1].append(block)
    return stages


@register_family()
class EfficientNetFamily(Family):
    name = "efficientnet"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, _TIMM + _TORCHVISION)

    def points(self, model: nn.Module) -> dict[str, SitePoint]:
        if isinstance(model, _TIMM):
            return staged_points(model.bn1, model.blocks, "nchw")
        stem, stages, _ = _torchvision_parts(model)
        return staged_points(stem, stages, "nchw")

    def steps(self, model: nn.Module) -> list[Step]:
        if isinstance(model, _TIMM):
            stages = [(None, stage) for stage in model.blocks]
            if isinstance(model, timm.models.efficientnet.EfficientNet):
                tail = lambda x: model.forward_head(model.bn2(model.conv_head(x)))  # noqa: E731
            else:  # MobileNetV3 keeps its head convolution in forward_head
                tail = model.forward_head
            return staged_steps(lambda x: model.bn1(model.conv_stem(x)), stages, tail)
        stem, stages, head_conv = _torchvision_parts(model)

        def tail(x):
            x = head_conv(x)
            x = F.adaptive_avg_pool2d(x, 1) if isinstance(model, tvm.MobileNetV2) else model.avgpool(x)
            return model.classifier(torch.flatten(x, 1))

        return staged_steps(stem, [(None, stage) for stage in stages], tail)


def _torchvision_parts(model: nn.Module) -> tuple[nn.Module, list[list[nn.Module]], nn.Module]:
    """(stem, stages of blocks, head convolution) of a torchvision MobileNet / EfficientNet."""
    stem, *middle, head_conv = list(model.features)
    if isinstance(model, tvm.EfficientNet):
        return stem, [list(stage) for stage in middle], head_conv
    return stem, _group_by_channels(middle), head_conv
