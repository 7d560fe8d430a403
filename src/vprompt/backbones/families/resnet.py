"""ResNet-like CNNs: timm ``ResNet`` (ResNet, ResNeXt, SE-ResNet, Wide ResNet, ...) and torchvision ``ResNet``.

Sites (``C×H×W``): ``embed`` (after the stem's max-pool), ``block.N`` (residual blocks numbered across
stages), ``stage.N`` (``layer1`` .. ``layer4`` are stages 0..3).
"""

from __future__ import annotations

import timm.models.resnet
import torch
import torchvision.models.resnet
from torch import nn

from ..sites import SitePoint
from .base import Family, Step, register_family, staged_points, staged_steps


@register_family()
class ResNetFamily(Family):
    name = "resnet"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, timm.models.resnet.ResNet | torchvision.models.resnet.ResNet)

    def points(self, model: nn.Module) -> dict[str, SitePoint]:
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        return staged_points(model.maxpool, stages, "nchw")

    def steps(self, model: nn.Module) -> list[Step]:
        stages = [(None, layer) for layer in (model.layer1, model.layer2, model.layer3, model.layer4)]
        if isinstance(model, timm.models.resnet.ResNet):

            def stem(x):
                return model.maxpool(model.act1(model.bn1(model.conv1(x))))

            return staged_steps(stem, stages, model.forward_head)

        def tv_stem(x):
            return model.maxpool(model.relu(model.bn1(model.conv1(x))))

        return staged_steps(tv_stem, stages, lambda x: model.fc(torch.flatten(model.avgpool(x), 1)))
