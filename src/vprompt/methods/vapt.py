"""Visual adaptive prompt tuning (VAPT): prompt tokens computed from the current token features.

Le et al., "Adaptive Prompt: Unlocking the Power of Visual Prompt Tuning" (ICLR 2026 as "Revisit Visual
Prompt Tuning: The Expressiveness of Prompt Experts"); pinned against the official code
(Minhchuyentoancbn/VAPT) by ``tests/methods/test_official_reference.py``.
Design notes: ``docs/design.md``, section ``vprompt/methods/vapt.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..backbones.cls_only import ignores_rows, keeps_cls_row
from .base import SIZE_FACTOR, Method, MethodConfig, MethodNotApplicable, check_size, register_method
from .parts import FeatureProjector
from .timm_views import hide_prompts
from .vpt import TOKEN_FAMILIES, TokenGeometry, insert_tokens, pool_prompts_field, split_tokens


@dataclass
class VAPTConfig(MethodConfig):
    num_prompts: int = field(default=10, metadata={"help": "number of prompt tokens N_p"})
    hidden: int = field(default=8, metadata={"help": "hidden size of the shared feature projector"})
    kernel: int = field(
        default=2, metadata={"help": "side K of each layer's channel-wise (depthwise, shared) kernel"}
    )
    prompt_dropout: float = field(
        default=0.1,
        metadata={"help": "dropout on the block-0 prompt P0 as it is inserted (training only)"},
    )
    conv_dropout: float = field(
        default=0.1, metadata={"help": "Dropout2d rate after each layer's channel-wise convolution"}
    )
    dropout: float = field(
        default=0.1, metadata={"help": "dropout on the hidden activation of the feature projector"}
    )
    pool_prompts: bool | None = pool_prompts_field()


@register_method(order=90)
class VAPT(Method):
    name = "vapt"
    summary = "adaptive prompts: each block's prompt tokens computed from its input tokens by a tiny network"
    families = TOKEN_FAMILIES
    config_class = VAPTConfig

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        geo = TokenGeometry.of(self, backbone)
        for option in ("prompt_dropout", "conv_dropout", "dropout"):
            if not 0.0 <= getattr(c, option) <= 1.0:
                raise MethodNotApplicable(f"vapt {option} must be in [0, 1], got {getattr(c, option)}")
        h, w = geo.grid
        check_size(self, "num_prompts", c.num_prompts, *geo.prompt_bound(backbone))
        check_size(
            self, "hidden", c.hidden, SIZE_FACTOR * geo.dim, f"{SIZE_FACTOR}× the embedding size {geo.dim}"
        )
        check_size(self, "kernel", c.kernel, min(h, w), f"the {h}×{w} patch grid of {backbone.name!r}")
        self.geometry = geo
        dim, layers = geo.dim, geo.depth - 1  # adaptive prompts before blocks 1..L-1
        conv_tokens = (h - c.kernel + 1) * (w - c.kernel + 1)
        #: static prompt of block 0, ``(N_p, D)``
        self.prompt = nn.Parameter(geo.vpt_init_(torch.empty(c.num_prompts, dim)))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        #: one K×K kernel per layer, shared by all D channels; N(0, 1) as the official code
        self.kernels = nn.Parameter(torch.randn(layers, 1, 1, c.kernel, c.kernel))
        self.projectors = nn.ModuleList(nn.Linear(conv_tokens, c.num_prompts) for _ in range(layers))
        for projector in self.projectors:
            nn.init.zeros_(projector.weight)
            nn.init.zeros_(projector.bias)
        self.feature_projector = FeatureProjector(dim, c.hidden, c.dropout) if layers else None
        self.hook(backbone, "embed", self._insert)
        prompt_rows = geo.prefix, geo.prefix + c.num_prompts  # never read: each block may skip them
        for layer in range(1, geo.depth):
            self.hook(backbone, f"block.{layer - 1}", ignores_rows(partial(self._adapt, layer), *prompt_rows))
        self.hook(backbone, f"block.{geo.depth - 1}", geo.end_hook(self._strip, c.num_prompts))
        self._handles += hide_prompts(backbone.model, c.num_prompts, self.name)

    def first_site(self, backbone: Backbone) -> str:
        return "embed"  # prompts enter after the token embedding

    def _insert(self, x: torch.Tensor) -> torch.Tensor:
        prompts = self.prompt.to(x.dtype).expand(x.shape[0], -1, -1)
        if self.training and self.config.prompt_dropout > 0:  # a mask per sample and element
            prompts = F.dropout(prompts, self.config.prompt_dropout, training=True)
        return insert_tokens(x, prompts, self.geometry.prefix)

    def adaptive_prompts(self, layer: int, patches: torch.Tensor) -> torch.Tensor:
        """The prompts of block ``layer`` (1..L-1) from its input patch tokens ``(B, h·w, D)``: ``(B, N_p, D)``.

        Computed in an equivalent, cheaper order than written in the module docstring: the convolution
        (one kernel shared by all channels) and the token-wise projector are both linear maps over the
        spatial axis, and ``Dropout2d`` only scales whole channels, which commutes with them. So the
        projector weight ``W`` (``N_p × h'w'``) is first pushed through the convolution's adjoint
        (a transposed convolution of ``W`` by the kernel), giving one ``N_p × hw`` map applied to the
        normalised tokens by a single batched matmul. Same values and gradients, no ``(B, D, h, w)``
        transposes and no depthwise convolution over the activations.
        """
        geo, c, i = self.geometry, self.config, layer - 1
        (h, w), batch = geo.grid, patches.shape[0]
        if patches.shape[1] != h * w:
            raise RuntimeError(
                f"vapt was attached for a {h}×{w} patch grid ({h * w} tokens) but block {layer} gets "
                f"{patches.shape[1]} patch tokens; attach it again at the new input size"
            )
        projector = self.projectors[i]
        weight = projector.weight.view(c.num_prompts, 1, h - c.kernel + 1, w - c.kernel + 1)
        spatial = F.conv_transpose2d(weight, self.kernels[i]).view(1, c.num_prompts, h * w)
        z = torch.bmm(spatial.expand(batch, -1, -1), self.norms[i](patches))  # (B, N_p, D)
        if self.training and c.conv_dropout > 0:  # Dropout2d: whole channels, per sample
            z = z * F.dropout(z.new_ones(batch, 1, geo.dim), c.conv_dropout, training=True)
        return self.feature_projector(z + projector.bias[:, None])

    def _adapt(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        head, _, patches = split_tokens(x, self.geometry.prefix, self.prompt.shape[0])
        return torch.cat([head, self.adaptive_prompts(layer, patches), patches], dim=1)

    @keeps_cls_row  # row 0 stays: the last block may compute the CLS row alone
    def _strip(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometry.end_tokens(x, self.prompt.shape[0])
