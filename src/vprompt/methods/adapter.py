"""Bottleneck adapters after the MLP of every transformer block.

Houlsby et al. 2019 / AdaptFormer-style placement: for each block's MLP, ``y = mlp(x)`` becomes
``y + scale · up(GELU(down(y)))`` with ``down: D → r`` (default Linear init) and ``up: r → D``
zero-initialised, so the adapted model starts exactly as the backbone. The adapters are this method's
own modules; they are connected by forward hooks on the MLP modules the family adapter names
(:meth:`vprompt.backbones.families.Family.mlps`), so the backbone's structure never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones import Backbone
from ..backbones.cls_only import tokenwise
from .base import Method, MethodConfig, MethodNotApplicable, check_size, register_method


@dataclass
class AdapterConfig(MethodConfig):
    r: int = field(default=8, metadata={"help": "bottleneck width"})
    scale: float = field(
        default=1.0, metadata={"help": "factor on the adapter's output before the residual sum"}
    )


class BottleneckAdapter(nn.Module):
    """``down`` (D → r), GELU, ``up`` (r → D, zero-initialised); returns only the update."""

    def __init__(self, dim: int, r: int):
        super().__init__()
        self.down = nn.Linear(dim, r)
        self.act = nn.GELU()
        self.up = nn.Linear(r, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def mlp_width(mlp: nn.Module) -> int:
    """Output width of an MLP: the ``out_features`` of its last Linear."""
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise MethodNotApplicable(f"adapter: MLP module {type(mlp).__name__} has no Linear layer")
    return linears[-1].out_features


@register_method(order=140)
class Adapter(Method):
    name = "adapter"
    summary = "bottleneck adapter (down, GELU, zero-init up, residual) after each transformer block's MLP"
    families = "transformers (vit, swin)"
    config_class = AdapterConfig

    def attach(self, backbone: Backbone) -> None:
        mlps = backbone.family.mlps(backbone.model)
        if not mlps:
            raise MethodNotApplicable(
                f"adapter goes after transformer-block MLPs; backbone {backbone.name!r} is of family "
                f"{backbone.family.name!r}, which has none"
            )
        width = min(mlp_width(mlp) for mlp in mlps)
        check_size(self, "r", self.config.r, width, f"the width {width} of the MLPs it follows: a bottleneck")
        self.adapters = nn.ModuleList(BottleneckAdapter(mlp_width(mlp), self.config.r) for mlp in mlps)
        for mlp, adapter in zip(mlps, self.adapters, strict=True):
            self._handles.append(mlp.register_forward_hook(self._hook(adapter)))

    def first_site(self, backbone: Backbone) -> str:
        return "embed"  # the first adapted MLP is in block 0

    def _hook(self, adapter: BottleneckAdapter):
        @tokenwise  # each token alone: the last block may compute the CLS row alone
        def forward_hook(_module, _args, output: torch.Tensor) -> torch.Tensor:
            return output + self.config.scale * adapter(output)

        return forward_hook
