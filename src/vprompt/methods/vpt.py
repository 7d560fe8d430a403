"""Visual prompt tuning (VPT): learned prompt tokens inserted into a plain ViT's token sequence.

Jia et al., "Visual Prompt Tuning" (ECCV 2022): ``vpt-shallow`` and ``vpt-deep``. The helpers here
(:class:`TokenGeometry`, :func:`insert_tokens`, ...) are shared with VAPT; E²VPT extends VPT-deep.
Design notes: ``docs/design.md``, section ``vprompt/methods/vpt.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from ..backbones import Backbone
from ..backbones.cls_only import ignores_rows, keeps_cls_row
from .base import (
    SIZE_FACTOR,
    Method,
    MethodConfig,
    MethodNotApplicable,
    check_size,
    register_method,
    require_tokens,
)
from .timm_views import hide_prompts

#: families every token-prompt method supports, for ``vprompt methods``
TOKEN_FAMILIES = "plain ViT (timm VisionTransformer: ViT, DeiT, DINOv2, registers)"
#: poolings (:meth:`Family.token_pooling`) that reduce every token after the prefix: prompt tokens left in
#: the sequence are pooled with the patch tokens
TOKEN_REDUCTIONS = ("avg", "max", "avgmax")


def pool_prompts_field() -> Any:
    """The ``pool_prompts`` option every token-prompt method's config has (see :func:`pools_prompts`)."""
    return field(
        default=None,
        metadata={
            "help": "the head pools the prompt tokens' outputs with the patch tokens, as the official code's "
            "default VIT_POOL_TYPE 'original' (default: when the backbone averages its tokens, e.g. MAE); "
            "--no-pool-prompts: the patch tokens only ('img_pool'); no effect with CLS pooling"
        },
    )


def pools_prompts(method: Method, backbone: Backbone) -> bool:
    """Whether the prompt tokens stay in the sequence after the last block, for the head to pool with the
    patch tokens: ``method.config.pool_prompts``, where ``None`` follows the backbone's pooling (yes when
    its head reduces the tokens after the prefix, :data:`TOKEN_REDUCTIONS`)."""
    choice = getattr(method.config, "pool_prompts", None)
    if choice is not None and not isinstance(choice, bool):
        raise MethodNotApplicable(
            f"{method.name} pool_prompts must be true, false or null (follow the backbone), got {choice!r}"
        )
    pooling = backbone.family.token_pooling(backbone.model)
    if pooling in TOKEN_REDUCTIONS:
        return True if choice is None else choice
    if choice and pooling != "token":
        raise MethodNotApplicable(
            f"{method.name} pool_prompts: backbone {backbone.name!r} pools {pooling!r}, neither the tokens "
            f"after the prefix ({', '.join(TOKEN_REDUCTIONS)}) nor the class token; leave pool_prompts unset"
        )
    return False  # CLS pooling reads the class token alone: the prompts are removed as before


@dataclass(frozen=True)
class TokenGeometry:
    """The token layout of a plain ViT, as token-prompt methods need it."""

    #: number of prefix tokens (CLS + registers + distillation token)
    prefix: int
    #: patch grid (h, w)
    grid: tuple[int, int]
    #: embedding size D
    dim: int
    #: number of blocks L
    depth: int
    #: pixels per patch (p² for square patches), from the input size and the grid
    patch_area: int
    #: the prompt tokens stay after the last block, for the head to pool (:func:`pools_prompts`)
    pool_prompts: bool = False

    @classmethod
    def of(cls, method: Method, backbone: Backbone) -> TokenGeometry:
        require_tokens(method, backbone)
        embed = backbone.site("embed")
        depth = sum(1 for name in backbone.sites if name.startswith("block."))
        if embed.layout != "tokens" or embed.grid is None or depth == 0:
            raise MethodNotApplicable(
                f"{method.name} needs a token sequence with a patch grid and at least one block; "
                f"backbone {backbone.name!r} (family {backbone.family.name!r}) does not provide one"
            )
        h, w = embed.grid
        height, width = backbone.input_size[-2:]
        patch_area = max(1, height // h) * max(1, width // w)
        pool = pools_prompts(method, backbone)
        return cls(embed.prefix_tokens, (h, w), embed.shape[-1], depth, patch_area, pool)

    def prompt_bound(self, backbone: Backbone) -> tuple[int, str]:
        """The most prompt tokens a method may insert, and why: :data:`SIZE_FACTOR` times the sequence."""
        tokens = self.prefix + self.grid[0] * self.grid[1]
        return SIZE_FACTOR * tokens, f"{SIZE_FACTOR}× the {tokens} tokens of {backbone.name!r}'s sequence"

    def vpt_init_(self, prompts: torch.Tensor) -> torch.Tensor:
        """VPT's xavier-uniform init: ``U(-b, b)`` with ``b = sqrt(6 / (3·p² + D))``."""
        bound = math.sqrt(6.0 / (3 * self.patch_area + self.dim))
        with torch.no_grad():
            return prompts.uniform_(-bound, bound)

    def end_tokens(self, x: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """After the last block: ``[prefix, prompts, X]`` → ``[prefix, X]``, or unchanged when the head
        pools the prompt tokens (:attr:`pool_prompts`); row 0 stays either way."""
        return x if self.pool_prompts else strip_tokens(x, num_prompts, self.prefix)

    def end_hook(self, strip: Callable, num_prompts: int) -> Callable:
        """The last block's ``strip`` (calling :meth:`end_tokens`) as it is hooked: its prompt rows are
        never read, so the block may skip them, unless the head pools them (:attr:`pool_prompts`)."""
        return strip if self.pool_prompts else ignores_rows(strip, self.prefix, self.prefix + num_prompts)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the token axis, skipping empty parts (a lone part is returned as a view)."""
    parts = [p for p in parts if p.shape[1]]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def split_tokens(x: torch.Tensor, prefix: int, num_prompts: int) -> tuple[torch.Tensor, ...]:
    """``[prefix, prompts, X]`` → ``(prefix, prompts, X)`` views.

    ``split`` rather than slicing: its backward is one concatenation, where every slice's backward
    would allocate and zero-fill a gradient the size of the whole sequence.
    """
    return x.split([prefix, num_prompts, x.shape[1] - prefix - num_prompts], dim=1)


def insert_tokens(x: torch.Tensor, prompts: torch.Tensor, prefix: int) -> torch.Tensor:
    """``[prefix, X]`` → ``[prefix, prompts, X]``; ``prompts`` is ``(B, N_p, D)``."""
    head, _, patches = split_tokens(x, prefix, 0)
    return _cat([head, prompts, patches])


def replace_tokens(x: torch.Tensor, prompts: torch.Tensor, prefix: int) -> torch.Tensor:
    """``[prefix, old prompts, X]`` → ``[prefix, prompts, X]``."""
    head, _, patches = split_tokens(x, prefix, prompts.shape[1])
    return _cat([head, prompts, patches])


def strip_tokens(x: torch.Tensor, num_prompts: int, prefix: int) -> torch.Tensor:
    """``[prefix, prompts, X]`` → ``[prefix, X]``."""
    head, _, patches = split_tokens(x, prefix, num_prompts)
    return _cat([head, patches])


@dataclass
class VPTConfig(MethodConfig):
    num_prompts: int = field(
        default=10, metadata={"help": "number of prompt tokens N_p (per layer for deep)"}
    )
    dropout: float | None = field(
        default=None,
        metadata={"help": "dropout on the prompts as they are inserted (default: 0 shallow, 0.1 deep)"},
    )
    pool_prompts: bool | None = pool_prompts_field()


@register_method(order=70)
class VPTShallow(Method):
    name = "vpt-shallow"
    summary = "VPT: N_p learned prompt tokens inserted after the CLS/register tokens before block 0"
    families = TOKEN_FAMILIES
    config_class = VPTConfig
    #: whether every block gets its own prompts
    deep = False
    default_dropout = 0.0

    def attach(self, backbone: Backbone) -> None:
        geo = TokenGeometry.of(self, backbone)
        num_prompts = self.config.num_prompts
        check_size(self, "num_prompts", num_prompts, *geo.prompt_bound(backbone))
        dropout = self.default_dropout if self.config.dropout is None else self.config.dropout
        if not 0.0 <= dropout < 1.0:
            raise MethodNotApplicable(f"{self.name} dropout must be in [0, 1), got {dropout}")
        self.geometry = geo
        layers = geo.depth if self.deep else 1
        #: prompts of block l at ``prompts[l]``: ``(layers, N_p, D)``
        self.prompts = nn.Parameter(geo.vpt_init_(torch.empty(layers, num_prompts, geo.dim)))
        self.hook_prompts(backbone, layers, num_prompts, dropout)

    def hook_prompts(self, backbone: Backbone, layers: int, num_prompts: int, dropout: float) -> None:
        """Hook the ``num_prompts`` tokens of :meth:`layer_prompts` into the sequence (``self.geometry``
        set): inserted at ``embed``, replaced after blocks 0..``layers``-2 (prompt rows each block may
        leave uncomputed), removed after the last block unless the head pools them; dropout as inserted."""
        geo = self.geometry
        self.prompt_dropout = nn.Dropout(dropout)
        #: prompt tokens in the sequence
        self.num_tokens = num_prompts
        self.hook(backbone, "embed", self._insert)
        prompt_rows = geo.prefix, geo.prefix + num_prompts  # never read: each block may skip them
        for layer in range(1, layers):
            self.hook(
                backbone, f"block.{layer - 1}", ignores_rows(partial(self._replace, layer), *prompt_rows)
            )
        self.hook(backbone, f"block.{geo.depth - 1}", geo.end_hook(self._strip, num_prompts))
        self._handles += hide_prompts(backbone.model, num_prompts, self.name)

    def first_site(self, backbone: Backbone) -> str:
        return "embed"  # prompts enter after the token embedding

    def layer_prompts(self, layer: int) -> torch.Tensor:
        """The prompts that enter before block ``layer`` (0: at ``embed``), ``(N_p, D)``."""
        return self.prompts[layer]

    def _layer_prompts(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        prompts = self.layer_prompts(layer).to(x.dtype).expand(x.shape[0], -1, -1)
        if self.training and self.prompt_dropout.p > 0:
            prompts = self.prompt_dropout(prompts)
        return prompts

    def _insert(self, x: torch.Tensor) -> torch.Tensor:
        return insert_tokens(x, self._layer_prompts(0, x), self.geometry.prefix)

    def _replace(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return replace_tokens(x, self._layer_prompts(layer, x), self.geometry.prefix)

    @keeps_cls_row  # row 0 stays: the last block may compute the CLS row alone
    def _strip(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometry.end_tokens(x, self.num_tokens)


@register_method(order=80)
class VPTDeep(VPTShallow):
    name = "vpt-deep"
    summary = "VPT-deep: every block gets its own N_p learned prompt tokens (replacing the previous ones)"
    deep = True
    default_dropout = 0.1
