"""Adaptive activation prompts (AAP): AP's *where* (an intermediate activation) with VAPT's *what* (a prompt
computed from the input).

At one site of any family (ViT tokens, CNN NCHW, Swin NHWC) the activation ``A`` is replaced by

    A + P + g(A),    g(A) = W2 · ReLU(dropout(W1 · (k ⊛ LN(A))))

where every part is chosen for what it buys at the smallest cost (``D`` channels, ``N`` positions):

- ``P``, AP's static prompt (:mod:`.ap`), in AP's ``full`` / ``channel`` / ``spatial`` shapes, zero-init:
  the input-independent shift AP's paper shows is already strong. Cost: the prompt's size (``T·D``,
  ``C·H·W``, ``D`` or ``N``).
- ``LN``: a layer normalisation over the channels at each position, without affine parameters. The
  generator then reads standardised features whatever the site: a CNN stem, a post-BatchNorm stage and
  a DINOv2 residual stream (channels with values in the hundreds) differ in scale by orders of magnitude,
  and without it the generator's step size and its hidden ReLUs would depend on the site's scale. The
  affine parameters are left out because they add nothing: a per-channel scale commutes with a kernel
  shared by all channels and is absorbed exactly by ``W1``; a shift only adds a bias to the hidden layer
  (VAPT's per-layer LayerNorm spends ``2·D`` parameters on them). Cost: no parameters, one pass.
- ``k ⊛``: ONE ``K×K`` kernel shared by all channels, applied depthwise (VAPT's channel-wise
  convolution), with zero padding so that ``g(A)`` keeps ``A``'s grid (VAPT's unpadded ``K=2`` shrinks
  the grid because its token projector pools it away; here the output lives on the activation's own
  positions, so there is no token projector). It gives each position's prompt its neighbourhood
  (edges, texture, where an object is), which a per-position map cannot see. Initialised as a centred
  delta, so training starts from a pointwise generator with every tap trainable; odd ``K`` only, so the
  kernel is centred. Prefix tokens (CLS, registers) have no grid: each is its own 1×1 grid under the
  same zero padding, i.e. it is scaled by the centre tap. Cost: ``K²`` parameters (9), one depthwise
  convolution (``N·D·K²`` multiply-adds).
- ``W2·ReLU(dropout(W1·))``: VAPT's low-rank feature projector (``D → hidden → D``, no biases,
  :class:`~.parts.FeatureProjector`) without its residual ``z + ...`` (which would make ``g`` non-zero at
  the start). It mixes channels through a ``hidden``-wide bottleneck: what the generator can express
  beyond a per-channel gain. ``W2`` starts at zero, so ``g(A) = 0`` and the prompted model equals the
  backbone exactly at initialisation; ``W1`` keeps ``nn.Linear``'s random init, so ``W2`` gets a
  gradient from the first step and the rest from the second (LoRA's A/B scheme). Cost: ``2·D·hidden``
  parameters, ``2·N·D·hidden`` multiply-adds.

Trainable parameters, head excluded (checked in ``tests/methods/test_aap.py``; random-init backbones at
224 px, ``hidden`` 8, ``kernel`` 3), AP's in brackets:

=========================================  =================  ==============  ============
site (activation)                          full               channel         spatial
=========================================  =================  ==============  ============
ViT-B/16 ``block.6`` (197×768)             163,593 (151,296)  13,065 (768)    12,494 (197)
ResNet-50 ``stage.1`` (512×28×28)          409,609 (401,408)  8,713 (512)     8,985 (784)
ResNet-50 ``stage.2`` (1024×14×14)         217,097 (200,704)  17,417 (1,024)  16,589 (196)
EfficientNet-Lite0 ``stage.3`` (80×14×14)  16,969 (15,680)    1,369 (80)      1,485 (196)
=========================================  =================  ==============  ============

The generator adds ``K² + 2·D·hidden`` parameters to AP's, whatever the shape. It reads the site's *raw*
activation, which depends on nothing trained, so the frozen-prefix cache may hold the activations at
the site, as for AP (the engine checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from .ap import ActivationPrompt, APConfig
from .base import SIZE_FACTOR, MethodNotApplicable, check_size
from .parts import FeatureProjector, shared_depthwise_conv


@dataclass
class AAPConfig(APConfig):
    hidden: int = field(default=8, metadata={"help": "hidden size of the generator's feature projector"})
    kernel: int = field(
        default=3, metadata={"help": "side K (odd) of the generator's one shared depthwise kernel"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout on the generator's hidden activation"})


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
