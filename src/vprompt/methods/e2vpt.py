"""E²VPT: VPT-deep's visual prompts plus learned key-value prompts inside every self-attention, prunable.

Han et al., "E²VPT: An Effective and Efficient Approach for Visual Prompt Tuning" (ICCV 2023); pinned
against the official code (ChengHan111/E2VPT) by ``tests/methods/test_e2vpt.py``. Token- and
segment-wise pruning: :func:`importance`, :func:`prune_options`, :func:`prune_grid`. Where the paper
leaves a choice open this follows the official code: one tensor as key and value prompts, kaiming-uniform
init, prompt segments interleaved (dims j, j+R, ...), the raw mask gradient as score. Documented in
``docs/methods.md``, section "E²VPT".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import (
    Attention,  # the same class as timm.layers.attention.Attention in newer timm
)
from torch import nn

from ..backbones import Backbone
from .base import MethodConfig, MethodNotApplicable, check_size, register_method
from .vpt import TOKEN_FAMILIES, TokenGeometry, VPTDeep, pool_prompts_field

#: the official pruning grid: percentages of the prompts (of the segments) to prune, and how many stay
PRUNE_PERCENTS = (10, 20, 30, 40, 50, 60, 70, 80, 90)
MIN_TOKENS, MIN_SEGMENTS = 1, 4


@dataclass
class E2VPTConfig(MethodConfig):
    num_prompts: int = field(
        default=10, metadata={"help": "visual prompt tokens per block N_p (before pruning)"}
    )
    kv_prompts: int = field(
        default=5,
        metadata={"help": "key-value prompts per block M, prepended to each attention's keys and values"},
    )
    share_kv: bool = field(
        default=True, metadata={"help": "one tensor serves as both key and value prompts (official default)"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout on the visual prompts (training only)"})
    kv_dropout: float = field(
        default=0.0, metadata={"help": "dropout on the key-value prompts (training only)"}
    )
    segments: int = field(
        default=16, metadata={"help": "segments R per visual prompt for segment-wise pruning (divides D)"}
    )
    learn_masks: bool = field(
        default=False,
        metadata={
            "help": "train a token mask (N_p) and a segment mask (N_p×R), ones at first: pruning stage 1"
        },
    )
    prune_tokens: list[int] = field(
        default_factory=list, metadata={"help": "visual prompts k removed (pruned), 0..N_p-1"}
    )
    prune_segments: list[int] = field(
        default_factory=list,
        metadata={"help": "segments k·R+j zeroed (segment j of prompt k: dims j, j+R, j+2R, ...)"},
    )
    pool_prompts: bool | None = pool_prompts_field()


class KVPromptAttention(nn.Module):
    """timm's ``Attention`` with learned key and value rows prepended (E²VPT's key-value prompts).

    It adopts the wrapped module's children under their own names (the backbone's ``state_dict`` keys do
    not change) and adds no parameter of its own: the rows come from ``rows(batch, dtype)``, a method's
    function. :meth:`extend_kv` is the whole change to timm's forward, which the CLS-only last block
    (``backbones/cls_only.py``) applies as well.
    """

    #: the CLS-only last block may run this module's forward for the CLS row (see ``extend_kv``)
    vprompt_extends_kv = True

    def __init__(
        self, base: Attention, rows: Callable[[int, torch.dtype], tuple[torch.Tensor, torch.Tensor]]
    ):
        super().__init__()
        for name, child in base.named_children():
            self.add_module(name, child)
        self.base = [base]  # in a list: not registered twice; what detach puts back
        self.rows = rows
        self.num_heads, self.head_dim, self.attn_dim = (
            base.num_heads,
            base.head_dim,
            base.num_heads * base.head_dim,
        )
        self.scale, self.fused_attn = base.scale, base.fused_attn
        if getattr(base, "gate", None) is None:
            self.gate = None
        self.train(base.training)

    def extend_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, T, d)`` keys and values → ``(B, H, M + T, d)``: the prompts first (official order)."""
        pk, pv = self.rows(k.shape[0], k.dtype)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise RuntimeError("e2vpt's key-value prompts do not support attention masks")
        batch, tokens, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        k, v = self.extend_kv(k, v)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(batch, tokens, self.attn_dim)
        if getattr(self, "norm", None) is not None:  # timm's scale-norm (Identity when off)
            x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


@register_method(order=105)
class E2VPT(VPTDeep):
    """VPT-deep's prompt hooks (:meth:`VPTDeep.hook_prompts`) with :meth:`visual_prompts` as the
    prompts, and :class:`KVPromptAttention` in every block."""

    name = "e2vpt"
    summary = "E²VPT: VPT-deep prompts + key-value prompts in every self-attention; token/segment pruning"
    families = TOKEN_FAMILIES
    config_class = E2VPTConfig

    def __init__(self, config: E2VPTConfig | None = None):
        super().__init__(config)
        self._wrapped: list[tuple[nn.Module, str, nn.Module]] = []
        #: temporary ones-masks while :func:`importance` scores a model trained without learned masks
        self._score_masks: tuple[torch.Tensor, torch.Tensor] | None = None
        self.token_mask: nn.Parameter | None = None
        self.segment_mask: nn.Parameter | None = None

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        geo = TokenGeometry.of(self, backbone)
        check_size(self, "num_prompts", c.num_prompts, *geo.prompt_bound(backbone))
        check_size(self, "kv_prompts", c.kv_prompts, *geo.prompt_bound(backbone))
        for option in ("dropout", "kv_dropout"):
            if not 0.0 <= getattr(c, option) < 1.0:
                raise MethodNotApplicable(f"e2vpt {option} must be in [0, 1), got {getattr(c, option)}")
        slots = backbone.family.attentions(backbone.model)
        if len(slots) != geo.depth or any(type(getattr(p, n)) is not Attention for p, n in slots):
            raise MethodNotApplicable(
                f"e2vpt wraps timm's Attention in every block; backbone {backbone.name!r} has "
                f"{sorted({type(getattr(p, n)).__name__ for p, n in slots}) or 'none'}"
            )
        kept, entries = self._pruned_layout(geo)
        self.geometry, self.kept = geo, kept
        depth, dim = geo.depth, geo.dim
        first = getattr(*slots[0])
        heads, head_dim = first.num_heads, first.head_dim
        # drawn in full whatever is pruned: the same seed gives the kept prompts their initial values
        visual = geo.vpt_init_(torch.empty(depth, c.num_prompts, dim))[:, kept]
        if entries is None:
            #: visual prompts of block l: ``(L, N_kept, D)``; with segments pruned ``(L, kept entries)``
            self.prompts = nn.Parameter(visual.contiguous())
        else:
            self.prompts = nn.Parameter(visual.reshape(depth, -1)[:, entries].contiguous())
        self.register_buffer("entries", entries, persistent=False)
        # kaiming-uniform (fan_in, a=0) of each layer's (H, M, d_h) tensor, as ORIGIN_INIT=2
        bound = math.sqrt(6.0 / (c.kv_prompts * head_dim))
        kinds = 1 if c.share_kv else 2
        #: key-value prompts ``(L, 1 or 2, H, M, d_h)``: index 0 keys (and values when shared), 1 values
        self.kv = nn.Parameter(
            torch.empty(depth, kinds, heads, c.kv_prompts, head_dim).uniform_(-bound, bound)
        )
        if c.learn_masks:
            self.token_mask = nn.Parameter(torch.ones(c.num_prompts))
            self.segment_mask = nn.Parameter(torch.ones(c.num_prompts, c.segments))
        self.hook_prompts(backbone, depth, len(kept), c.dropout)
        for layer, (parent, attr) in enumerate(slots):
            base = getattr(parent, attr)
            setattr(parent, attr, KVPromptAttention(base, partial(self.kv_rows, layer)))
            self._wrapped.append((parent, attr, base))

    def detach(self, backbone: Backbone) -> None:
        for parent, attr, base in reversed(self._wrapped):
            setattr(parent, attr, base)
        self._wrapped.clear()
        super().detach(backbone)

    def _pruned_layout(self, geo: TokenGeometry) -> tuple[list[int], torch.Tensor | None]:
        """Kept prompt indices, and the kept ``(token, dim)`` entries (flat, over the kept tokens) when
        segments are pruned; refuses malformed pruning options in one line."""
        c, n, r, dim = self.config, self.config.num_prompts, self.config.segments, geo.dim
        if (c.learn_masks or c.prune_segments) and (r < 1 or dim % r):
            raise MethodNotApplicable(f"e2vpt segments={r} must divide the embedding size {dim}")
        if c.learn_masks and (c.prune_tokens or c.prune_segments):
            raise MethodNotApplicable("e2vpt learn_masks is pruning's first stage: train it without prune_*")
        for option, high in (("prune_tokens", n), ("prune_segments", n * r)):
            values = list(getattr(c, option))
            bad = [v for v in values if not 0 <= v < high]
            if bad or len(set(values)) != len(values):
                raise MethodNotApplicable(
                    f"e2vpt {option} must be distinct indices from 0 to {high - 1}, got {values}"
                )
        gone = set(c.prune_tokens)
        kept = [k for k in range(n) if k not in gone]
        if not kept:
            raise MethodNotApplicable(f"e2vpt prune_tokens removes all {n} visual prompts; keep at least one")
        if not c.prune_segments:
            return kept, None
        segments: dict[int, set[int]] = {}
        for s in c.prune_segments:
            segments.setdefault(s // r, set()).add(s % r)
        if gone & set(segments):
            raise MethodNotApplicable(
                f"e2vpt prune_segments names segments of prompts {sorted(gone & set(segments))}, "
                "which prune_tokens removes already"
            )
        full = [k for k, js in segments.items() if len(js) == r]
        if full:
            raise MethodNotApplicable(
                f"e2vpt prune_segments zeroes every segment of prompts {full}: prune them with prune_tokens"
            )
        entries = [
            i * dim + d for i, k in enumerate(kept) for d in range(dim) if d % r not in segments.get(k, ())
        ]
        return kept, torch.tensor(entries, dtype=torch.long)

    # ------------------------------------------------------------------------------ the forward

    def visual_prompts(self, layer: int) -> torch.Tensor:
        """Block ``layer``'s visual prompts ``(N_kept, D)``: pruned segments zero, masks applied."""
        p = self.prompts[layer]
        kept, dim = len(self.kept), self.geometry.dim
        if self.entries is not None:
            p = p.new_zeros(kept * dim).scatter(0, self.entries, p).view(kept, dim)
        masks = (self.token_mask, self.segment_mask) if self.config.learn_masks else self._score_masks
        if masks is not None:  # official order: segments (tiled over the dims), then tokens
            tokens, segments = masks
            p = p * segments.repeat(1, dim // segments.shape[1])
            p = p * tokens[:, None]
        return p

    layer_prompts = visual_prompts  # what VPT-deep's hooks insert

    def kv_rows(self, layer: int, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``layer``'s key and value prompts, ``(B, H, M, d_h)`` each (dropout per sample)."""
        rows = self.kv[layer].to(dtype)
        pk, pv = rows[0].expand(batch, -1, -1, -1), rows[-1].expand(batch, -1, -1, -1)
        if self.training and self.config.kv_dropout > 0:  # separately on keys and values, as official
            pk = F.dropout(pk, self.config.kv_dropout, training=True)
            pv = F.dropout(pv, self.config.kv_dropout, training=True)
        return pk, pv


# ------------------------------------------------------------------------------------- pruning


def importance(
    model: nn.Module, loader: Iterable, loss_fn: Callable[..., torch.Tensor] = F.cross_entropy
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official importance scores of the visual prompts: ``(tokens (N_p,), segments (N_p, R))``.

    The mean over ``loader``'s batches of the gradient of the batch's mean loss with respect to the token
    mask and the segment mask, taken where they are: the learned masks of a ``learn_masks`` model, else
    masks of ones (so ``∂L/∂ρ_k = Σ P_k·∂L/∂P_k``). The model is scored in eval mode, as the official
    code does; the sign is kept (the official code ranks the raw gradient; the paper writes ``|·|``).
    """
    method = getattr(model, "method", None)
    if not isinstance(method, E2VPT):
        raise TypeError(f"importance scores an attached e2vpt model, got {type(method).__name__}")
    c = method.config
    if c.prune_tokens or c.prune_segments:
        raise ValueError("importance scores the unpruned model of pruning's first stage")
    if method.geometry.dim % c.segments:
        raise ValueError(f"e2vpt segments={c.segments} must divide the embedding size {method.geometry.dim}")
    device = method.prompts.device
    if c.learn_masks:
        masks = (method.token_mask, method.segment_mask)
    else:
        ones = method.prompts.new_ones
        masks = (ones(c.num_prompts).requires_grad_(), ones(c.num_prompts, c.segments).requires_grad_())
        method._score_masks = masks
    was_training = model.training
    model.eval()
    tokens, segments, batches = torch.zeros_like(masks[0]), torch.zeros_like(masks[1]), 0
    try:
        for x, y in loader:
            loss = loss_fn(model(x.to(device)), y.to(device))
            grad_tokens, grad_segments = torch.autograd.grad(loss, masks)
            tokens, segments, batches = tokens + grad_tokens, segments + grad_segments, batches + 1
    finally:
        method._score_masks = None
        model.train(was_training)
    if not batches:
        raise ValueError("importance needs at least one batch")
    return tokens.detach() / batches, segments.detach() / batches


def prune_grid(num_prompts: int, segments: int = 16) -> tuple[list[int], list[int]]:
    """The official candidates: how many prompts and how many segments per prompt to prune.

    The distinct values of ``int(n · p / 100)`` for p = 10, 20, ..., 90 %, until one would leave fewer
    than 1 prompt (4 segments): that one is capped and is the last. Each pair is one rewinding run; the
    official code keeps the pair with the best validation accuracy.
    """

    def counts(n: int, minimum: int) -> list[int]:
        out = []
        for percent in PRUNE_PERCENTS:
            k = int(n * percent / 100)
            if k > n - minimum:
                out.append(n - minimum)
                break
            out.append(k)
        return sorted(set(out))

    return counts(num_prompts, MIN_TOKENS), counts(segments, MIN_SEGMENTS)


def prune_options(
    token_scores: torch.Tensor, segment_scores: torch.Tensor, tokens: int, segments: int
) -> dict[str, Any]:
    """The ``e2vpt`` options that prune the ``tokens`` lowest-scored prompts and, in every prompt that stays,
    its ``segments`` lowest-scored segments (ascending, ties to the lower index: the official ranking).

    Pass them (with the stage-1 options, the same seed, and without ``learn_masks``) to train the pruned
    model from the prompts' initial values: the rewinding stage.
    """
    n, r = segment_scores.shape
    if token_scores.shape != (n,):
        raise ValueError(f"token scores {tuple(token_scores.shape)} do not match segment scores {(n, r)}")
    if not 0 <= tokens < n or not 0 <= segments < r:
        raise ValueError(
            f"prune 0..{n - 1} of {n} prompts and 0..{r - 1} of {r} segments, got {tokens}, {segments}"
        )
    order = torch.argsort(token_scores.detach().cpu(), stable=True)
    gone = sorted(int(k) for k in order[:tokens])
    pruned_segments: list[int] = []
    for k in range(n):
        if k not in gone:
            low = torch.argsort(segment_scores[k].detach().cpu(), stable=True)[:segments]
            pruned_segments += sorted(k * r + int(j) for j in low)
    return {"prune_tokens": gone, "prune_segments": pruned_segments}
