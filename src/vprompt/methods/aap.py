"""Adaptive activation prompts (AAP): AP's *where* (an intermediate activation) with VAPT's *what* (a prompt
computed from the input).

At one site of any family the activation ``A`` becomes ``A + P + g(A)``, with
``g(A) = W2 · ReLU(dropout(W1 · (k ⊛ LN(A))))`` and ``W2`` zero-initialised.
Design notes: ``docs/design.md``, section ``vprompt/methods/aap.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from .ap import ActivationPrompt, APConfig
from .base import SIZE_FACTOR, MethodNotApplicable, check_size, register_method
from .parts import FeatureProjector, shared_depthwise_conv


@dataclass
class AAPConfig(APConfig):
    hidden: int = field(default=8, metadata={"help": "hidden size of the generator's feature projector"})
    kernel: int = field(
        default=3, metadata={"help": "side K (odd) of the generator's one shared depthwise kernel"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout on the generator's hidden activation"})


@register_method(order=40)
class AdaptiveActivationPrompt(ActivationPrompt):
    name = "aap"
    summary = (
        "adaptive activation prompt: AP's prompt plus a zero-initialised generator of the site's activation"
    )
    config_class = AAPConfig

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        if c.kernel % 2 == 0:
            raise MethodNotApplicable(f"aap needs an odd kernel (it is centred), got kernel={c.kernel}")
        if not 0.0 <= c.dropout < 1.0:
            raise MethodNotApplicable(f"aap dropout must be in [0, 1), got {c.dropout}")
        if c.site and c.site in backbone.sites:
            site = backbone.site(c.site)
            if site.layout == "tokens" and (
                site.grid is None or site.shape[0] != site.prefix_tokens + site.grid[0] * site.grid[1]
            ):
                raise MethodNotApplicable(
                    f"aap needs a patch grid at token site {site.name!r} of {backbone.name!r}; it has none"
                )
            self.layout, self.prefix, self.grid = site.layout, site.prefix_tokens, site.grid
            dim = site.shape[{"tokens": 1, "nchw": 0, "nhwc": 2, "vector": 0}[site.layout]]
            h, w = {"tokens": site.grid, "nchw": site.shape[1:], "nhwc": site.shape[:2]}.get(
                site.layout, (1, 1)
            )
            where = f"site {site.name!r} of {backbone.name!r}"
            reach = f"2·side+1 for the {h}×{w} grid of {where}: a wider kernel's outer taps never reach it"
            check_size(self, "kernel", c.kernel, 2 * max(h, w) + 1, reach)
            check_size(
                self, "hidden", c.hidden, SIZE_FACTOR * dim, f"{SIZE_FACTOR}× the {dim} channels of {where}"
            )
            #: ONE K×K kernel shared by all channels, initialised as a centred delta (identity)
            self.kernel = nn.Parameter(torch.zeros(c.kernel, c.kernel))
            with torch.no_grad():
                self.kernel[c.kernel // 2, c.kernel // 2] = 1.0
            self.projector = FeatureProjector(dim, c.hidden, c.dropout, residual=False, zero_output=True)
        super().attach(backbone)  # the site checks, AP's prompt and the hook (which calls self.add)

    def add(self, activation: torch.Tensor) -> torch.Tensor:
        return activation + self.prompt + self.generate(activation)

    def generate(self, a: torch.Tensor) -> torch.Tensor:
        """``g(A)``: the input-conditioned part of the prompt, with ``A``'s shape."""
        k, pad = self.kernel.to(a.dtype), self.config.kernel // 2
        if self.layout == "nchw":  # (B, C, H, W): normalise and project channels-last
            z = F.layer_norm(a.permute(0, 2, 3, 1), a.shape[1:2])
            z = shared_depthwise_conv(z.permute(0, 3, 1, 2), k, pad)
            return self.projector(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.layout == "nhwc":  # (B, H, W, C)
            z = F.layer_norm(a, a.shape[-1:])
            z = shared_depthwise_conv(z.permute(0, 3, 1, 2), k, pad).permute(0, 2, 3, 1)
            return self.projector(z)
        z = F.layer_norm(a, a.shape[-1:])
        centre = k[pad, pad]
        if self.layout == "vector":  # one position: a 1×1 grid
            return self.projector(z * centre)
        # tokens (B, T, D): prefix tokens are 1×1 grids, the patch tokens form the h×w grid
        head, patches = z[:, : self.prefix], z[:, self.prefix :]
        maps = patches.transpose(1, 2).unflatten(2, self.grid)  # (B, D, h, w)
        patches = shared_depthwise_conv(maps, k, pad).flatten(2).transpose(1, 2)
        return self.projector(torch.cat([head * centre, patches], dim=1))
