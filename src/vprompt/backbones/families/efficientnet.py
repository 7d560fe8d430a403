"""EfficientNet / MobileNet: timm ``EfficientNet`` and ``MobileNetV3`` (EfficientNet, EfficientNet-Lite,
MobileNetV2/V3, MNASNet, ...), torchvision ``MobileNetV2``, ``MobileNetV3`` and ``EfficientNet``.

Sites (``C×H×W``): ``embed`` (stem conv + norm), ``block.N`` (inverted-residual blocks numbered across
stages), ``stage.N``. timm groups blocks into stages itself; torchvision's MobileNets keep a flat list,
where a new stage starts whenever a block changes the channel count.
"""

from __future__ import annotations

import timm.models.efficientnet
import timm.models.mobilenetv3
import torchvision.models as tvm
from torch import nn

from ..sites import SitePoint
from .base import Family, staged_points

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


class EfficientNetFamily(Family):
    name = "efficientnet"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, _TIMM + _TORCHVISION)

    def points(self, model: nn.Module) -> dict[str, SitePoint]:
        if isinstance(model, _TIMM):
            return staged_points(model.bn1, model.blocks, "nchw")
        stem, *middle, _head_conv = list(model.features)
        if isinstance(model, tvm.EfficientNet):
            stages = [list(stage) for stage in middle]
        else:
            stages = _group_by_channels(middle)
        return staged_points(stem, stages, "nchw")
