"""The parameter-selection baselines: linear probe, full fine-tuning, norm tuning, BitFit.

They add no modules: each only says which backbone parameters are trained (the head always is).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..backbones import Backbone
from .base import Method, register_method

#: normalisation layers whose affine parameters norm tuning trains (timm's LayerNorm2d,
#: BatchNormAct2d, ... subclass these)
NORM_LAYERS = (nn.LayerNorm, _NormBase, nn.GroupNorm, nn.RMSNorm)


class _InWeights(Method):
    """A method that trains the backbone's own parameters: merging is just detaching."""

    can_merge = True

    def merge(self, backbone: Backbone) -> None:
        self.detach(backbone)


@register_method(order=10)
class LinearProbe(_InWeights):
    name = "linear"
    summary = "train only a new linear head on the frozen features"
    reference = True

    def first_site(self, backbone: Backbone) -> str:
        return "pre_logits"


@register_method(order=20)
class FullFineTuning(_InWeights):
    name = "full"
    summary = "train every parameter (the backbone stays in eval mode: no dropout/drop-path, BN stats frozen)"

    def backbone_parameters(self, backbone: Backbone) -> Iterable[nn.Parameter]:
        return backbone.parameters()


@register_method(order=110)
class NormTuning(_InWeights):
    name = "norm"
    summary = (
        "train the affine parameters of every LayerNorm (ViT) / BatchNorm (CNN); running stats stay frozen"
    )

    def backbone_parameters(self, backbone: Backbone) -> Iterable[nn.Parameter]:
        for module in backbone.modules():
            if isinstance(module, NORM_LAYERS):
                yield from module.parameters(recurse=False)


@register_method(order=120)
class BitFit(_InWeights):
    name = "bitfit"
    summary = "train every bias of the backbone"

    def backbone_parameters(self, backbone: Backbone) -> Iterable[nn.Parameter]:
        return (p for n, p in backbone.named_parameters() if n.rsplit(".", 1)[-1] == "bias")
