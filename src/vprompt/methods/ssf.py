"""SSF: a learned per-channel scale and shift after the backbone's operations.

Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning" (NeurIPS 2022).
Each adapted output ``y`` becomes ``γ ⊙ y + β`` (``γ ~ N(1, 0.02²)``, ``β ~ N(0, 0.02²)`` as the official
code), after exactly the operations the official code adapts (as it runs) in ViT, Swin v1 and ConvNeXt;
CNNs, which it does not define, get one after every BatchNorm (before its activation).
:meth:`SSF.merge` folds ``γ, β`` into the preceding layers. Notes: ``docs/methods.md``, "``ssf``".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from timm.layers import LayerNorm2d
from timm.layers.norm_act import BatchNormAct2d
from timm.models.mlp_mixer import Affine
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..backbones import Backbone
from ..backbones.cls_only import tokenwise
from .base import Method, MethodNotApplicable, register_method

#: the official initialisation: ``γ ~ N(1, INIT_STD²)``, ``β ~ N(0, INIT_STD²)``
INIT_STD = 0.02
#: families whose placement follows the official code, and the CNN families that follow every BatchNorm
OFFICIAL_FAMILIES = ("vit", "swin", "convnext")
CNN_FAMILIES = ("resnet", "efficientnet")


@dataclass(frozen=True)
class Point:
    """One adapted output: the module (dotted name in ``backbone.model``) and its channel axis."""

    name: str
    channels: int
    #: ``-1`` channels-last (tokens, NHWC, Linear outputs), ``1`` channels-first (``N×C×H×W``)
    axis: int


class ScaleShift(nn.Module):
    """``x · γ + β`` along one channel axis (``γ``, ``β`` of shape ``(C,)``)."""

    def __init__(self, channels: int, axis: int):
        super().__init__()
        self.axis = axis
        self.scale = nn.Parameter(torch.empty(channels))
        self.shift = nn.Parameter(torch.empty(channels))
        nn.init.normal_(self.scale, mean=1.0, std=INIT_STD)
        nn.init.normal_(self.shift, std=INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == -1:
            return x * self.scale + self.shift
        shape = (-1,) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}, axis={self.axis}"


def _axis(module: nn.Module) -> int:
    """The channel axis of a module's output (channels-first for convolutions and 2-d norms)."""
    if isinstance(module, nn.Conv2d | _BatchNorm | LayerNorm2d | nn.GroupNorm):
        return 1
    return -1


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, _BatchNorm):
        return module.num_features
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]
    raise MethodNotApplicable(f"ssf cannot adapt a {type(module).__name__} (no per-channel output it knows)")


def _point(model: nn.Module, name: str) -> Point:
    module = model.get_submodule(name)
    return Point(name, _channels(module), _axis(module))


def _final(model: nn.Module, name: str, channels: int, axis: int) -> Point:
    """The last adapted output: after the final norm, or after the ``Identity`` that stands for it."""
    if isinstance(model.get_submodule(name), nn.Identity):
        return Point(name, channels, axis)
    return _point(model, name)


def _transformer_block(model: nn.Module, prefix: str, block: nn.Module) -> list[Point]:
    """norm1, attn.qkv, attn.proj, norm2, then every Linear of the MLP (fc1, fc2), as the official code."""
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    parts = ("norm1", "norm2")
    if (
        attn is None
        or mlp is None
        or not all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("qkv", "proj"))
        or not all(isinstance(getattr(block, n, None), nn.LayerNorm) for n in parts)
    ):
        raise MethodNotApplicable(
            f"ssf: {prefix} ({type(block).__name__}) is not a transformer block with norm1, attn.qkv, "
            "attn.proj, norm2 and an MLP"
        )
    names = [f"{prefix}.norm1", f"{prefix}.attn.qkv", f"{prefix}.attn.proj", f"{prefix}.norm2"]
    names += [f"{prefix}.mlp.{n}" for n, m in mlp.named_modules() if isinstance(m, nn.Linear)]
    return [_point(model, n) for n in names]


def _patch_embed(model: nn.Module) -> list[Point]:
    points = [_point(model, "patch_embed.proj")]
    if not isinstance(model.patch_embed.norm, nn.Identity):
        points.append(_point(model, "patch_embed.norm"))
    return points


def _vit(model: VisionTransformer) -> list[Point]:
    points = _patch_embed(model)
    if not isinstance(model.norm_pre, nn.Identity):  # CLIP-style pre-norm: not in the official ViT
        points.append(_point(model, "norm_pre"))
    for i, block in enumerate(model.blocks):
        points += _transformer_block(model, f"blocks.{i}", block)
    # after the final norm, also where it is an Identity (average pooling with fc_norm), as the official
    points.append(_final(model, "norm", model.embed_dim, -1))
    return points


def _swin(model: nn.Module) -> list[Point]:
    if not isinstance(model, SwinTransformer):
        raise MethodNotApplicable(
            f"ssf follows the official code, which defines it for Swin v1; {type(model).__name__} computes "
            "its qkv projection without calling its qkv module (separate q and v biases), so nothing can "
            "be placed after it"
        )
    points = _patch_embed(model)
    for s, stage in enumerate(model.layers):  # patch merging: none, as the official code runs (module doc)
        for b, block in enumerate(stage.blocks):
            points += _transformer_block(model, f"layers.{s}.blocks.{b}", block)
    points.append(_point(model, "norm"))
    return points


def _convs_and_norms(model: nn.Module, prefix: str) -> list[Point]:
    module = model.get_submodule(prefix)
    kinds = (nn.Conv2d, nn.LayerNorm)
    return [_point(model, f"{prefix}.{n}") for n, m in module.named_modules() if n and isinstance(m, kinds)]


def _convnext(model: nn.Module) -> list[Point]:
    points = _convs_and_norms(model, "stem")
    for s, stage in enumerate(model.stages):  # downsampling: none, as the official code runs (module doc)
        for b, block in enumerate(stage.blocks):
            prefix = f"stages.{s}.blocks.{b}"
            points += [_point(model, f"{prefix}.conv_dw"), _point(model, f"{prefix}.norm")]
            points += [
                _point(model, f"{prefix}.mlp.{n}")
                for n, m in block.mlp.named_modules()
                if isinstance(m, nn.Linear | nn.Conv2d)
            ]
    # after norm_pre (an Identity unless the head normalises first), before the head's pooling
    points.append(_final(model, "norm_pre", model.num_features, 1))
    return points


def _cnn(model: nn.Module, head_name: str) -> list[Point]:
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, _BatchNorm) and not (n == head_name or n.startswith(head_name + "."))
    ]
    if not names:
        raise MethodNotApplicable("ssf on a CNN follows every BatchNorm; this model has none")
    return [_point(model, n) for n in names]


def ssf_points(backbone: Backbone) -> list[Point]:
    """The outputs SSF adapts in ``backbone``, in forward order; ``MethodNotApplicable`` where undefined."""
    family, model = backbone.family.name, backbone.model
    if family == "vit":
        return _vit(model)
    if family == "swin":
        return _swin(model)
    if family == "convnext":
        return _convnext(model)
    if family in CNN_FAMILIES:
        return _cnn(model, backbone.head_name)
    raise MethodNotApplicable(
        f"ssf is placed by the model's structure; backbone {backbone.name!r} is of family {family!r}, "
        f"where it is not defined (families: {', '.join(OFFICIAL_FAMILIES + CNN_FAMILIES)})"
    )


def _key(name: str) -> str:
    return name.replace(".", "_")


@register_method(order=150)
class SSF(Method):
    name = "ssf"
    summary = "learned per-channel scale and shift after every operation (Lian et al. 2022); mergeable"
    families = "vit, swin (v1), convnext (as the official code); resnet, efficientnet (after each BatchNorm)"

    def __init__(self, config=None):
        super().__init__(config)
        #: the adapted outputs, in forward order (set by ``attach``)
        self.points: list[Point] = []

    def attach(self, backbone: Backbone) -> None:
        points = ssf_points(backbone)
        keys = [_key(p.name) for p in points]
        if len(set(keys)) != len(keys):
            raise RuntimeError(f"ssf: two adapted modules share a parameter name in {keys}")
        self.points = points
        self.ssf = nn.ModuleDict(
            {k: ScaleShift(p.channels, p.axis) for k, p in zip(keys, points, strict=True)}
        )
        model = backbone.model
        for point, key in zip(points, keys, strict=True):
            self._handles.append(self._hooked(model, point).register_forward_hook(self._hook(self.ssf[key])))

    @staticmethod
    def _hooked(model: nn.Module, point: Point) -> nn.Module:
        """The module whose output is adapted: inside timm's BatchNormAct2d, its ``drop`` (before the act)."""
        module = model.get_submodule(point.name)
        return module.drop if isinstance(module, BatchNormAct2d) else module

    @staticmethod
    def _hook(scale_shift: ScaleShift):
        @tokenwise  # per channel, each token alone: the last ViT block may compute the CLS row alone
        def forward_hook(_module, _args, output: torch.Tensor) -> torch.Tensor:
            return scale_shift(output)

        return forward_hook

    def backbone_parameters(self, backbone: Backbone) -> Iterable[nn.Parameter]:
        # the official code trains every parameter named "head.*": ConvNeXt's head norm as well
        if backbone.family.name not in OFFICIAL_FAMILIES:
            return
        head = {id(p) for p in backbone.head.parameters()}
        for name, p in backbone.model.named_parameters():
            if name.startswith("head.") and id(p) not in head:
                yield p

    can_merge = True

    def merge(self, backbone: Backbone) -> None:
        """Fold each ``γ, β`` into the layer before it (weight rows ``·γ``, bias ``γ·b + β``); an
        ``Identity`` before it becomes the same affine map as a plain layer (timm's ``Affine`` on
        channels-last tokens, a depthwise 1×1 ``Conv2d`` on ``N×C×H×W``)."""
        model = backbone.model
        with torch.no_grad():
            for point in self.points:
                ss = self.ssf[_key(point.name)]
                module = model.get_submodule(point.name)
                if isinstance(module, nn.Identity):
                    _replace(model, point.name, _affine(ss))
                else:
                    _fold(module, ss.scale.detach(), ss.shift.detach())
        self.detach(backbone)


def _fold(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``module``'s output ``y`` becomes ``y · scale + shift`` along its channels (in place)."""
    weight = module.weight
    if weight is None:  # a norm without affine parameters: give it some
        module.weight = nn.Parameter(torch.ones_like(scale), requires_grad=False)
        weight = module.weight
    weight.mul_(scale.to(weight).view((-1,) + (1,) * (weight.dim() - 1)))
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros_like(scale).to(weight), requires_grad=False)
    else:
        module.bias.mul_(scale.to(weight))
    module.bias.add_(shift.to(weight))


def _affine(ss: ScaleShift) -> nn.Module:
    channels = ss.scale.numel()
    if ss.axis == -1:
        layer = Affine(channels).to(ss.scale)
        layer.alpha.copy_(ss.scale.view(1, 1, -1))
        layer.beta.copy_(ss.shift.view(1, 1, -1))
    else:
        layer = nn.Conv2d(channels, channels, 1, groups=channels).to(ss.scale)
        layer.weight.copy_(ss.scale.view(-1, 1, 1, 1))
        layer.bias.copy_(ss.shift)
    return layer.requires_grad_(False)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
