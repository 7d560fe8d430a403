"""Only what is read: a CLS-pooled ViT's last block computes the CLS row alone, and a block whose
prompt output rows are replaced before anyone reads them (VPT-deep, VAPT) leaves them uncomputed.

:class:`ClsOnlyBlocks` replaces the model's ``blocks`` container; during a forward to the logits its
blocks compute keys and values of every token but the query, attention output, projection and MLP of
the rows that are read only, and step aside wherever that would not be exact or cannot be checked.
Design notes: ``docs/design.md``, section ``vprompt/backbones/cls_only.py``.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import (
    Attention,  # the same class as timm.layers.attention.Attention in newer timm
    Block,
    VisionTransformer,
)
from torch import nn
from torch.nn.modules import module as torch_module

from .sites import chain_hook_ids, hooked_functions


def tokenwise(fn: Callable) -> Callable:
    """Mark a hook function as acting on each token row alone (safe on the CLS row by itself)."""
    fn.vprompt_cls_row = "tokenwise"
    return fn


def keeps_cls_row(fn: Callable) -> Callable:
    """Mark a function hooked at the last block's output as leaving row 0 (the CLS token) unchanged."""
    fn.vprompt_cls_row = "keeps"
    return fn


def ignores_rows(fn: Callable, start: int, stop: int) -> Callable:
    """Mark ``fn``, hooked at a block's output, as never reading rows ``start:stop`` of it (it replaces
    or removes them, as VPT-deep's and VAPT's prompt hooks do): the block may leave those rows
    uncomputed. Returns the marked function (a ``functools.partial``; ``keeps_cls_row`` carries over)."""
    if not 0 <= start < stop:
        raise ValueError(f"ignores_rows needs 0 <= start < stop, got {start}:{stop}")
    marked = functools.partial(fn)
    if _marked(fn) is not None:
        marked.vprompt_cls_row = _marked(fn)
    marked.vprompt_ignored_rows = (start, stop)
    return marked


def _marked(fn: Any) -> str | None:
    return getattr(fn, "vprompt_cls_row", None)


def ignored_rows(fn: Any) -> tuple[int, int] | None:
    """The rows ``(start, stop)`` that a function marked by :func:`ignores_rows` never reads."""
    return getattr(fn, "vprompt_ignored_rows", None)


class ClsOnlyBlocks(nn.Sequential):
    """timm's ``blocks`` container, whose last block can compute the CLS row alone and whose blocks can
    leave unread rows uncomputed (see the module)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        #: set by :func:`reading_cls` for the length of a forward to the logits
        self.reads_cls = False
        #: likewise: blocks may leave the rows their output hook never reads uncomputed
        self.skips_rows = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.reads_cls or self.skips_rows) or len(self) == 0:
            return super().forward(x)
        blocks = list(self._modules.values())
        for block in blocks[:-1]:
            x = self.run_block(block, x)
        return self.last_block(x)

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``block(x)``, leaving the rows its output hook never reads uncomputed when that is exact now."""
        rows = skippable_rows(block, x) if self.skips_rows else None
        if rows is None:
            return block(x)
        start, stop = rows
        out = rows_forward(block, x, [(0, start), (stop, x.shape[1])])
        head, tail = out.split([start, out.shape[1] - start], dim=1)
        # the unread rows hold the block's input, detached: the first hooked function drops them
        out = torch.cat([head, x[:, start:stop].detach().to(out.dtype), tail], dim=1)
        for fn in hooked_functions(block, "output"):
            new = fn(out)
            out = out if new is None else new
        return out

    def last_block(self, x: torch.Tensor) -> torch.Tensor:
        """The last block on ``x``: the CLS row alone when that is exact now, else the rows that are read."""
        block = self[-1]
        if not self.reads_cls or why_not_block(block) is not None:
            return self.run_block(block, x)
        out = cls_row_forward(block, x)
        for fn in hooked_functions(block, "output"):
            if _marked(fn) == "tokenwise":
                new = fn(out)
                out = out if new is None else new
        return out


def install(model: nn.Module) -> ClsOnlyBlocks | None:
    """Give a timm ViT a :class:`ClsOnlyBlocks` container (idempotent); ``None`` for other models."""
    if not isinstance(model, VisionTransformer) or not isinstance(model.blocks, nn.Sequential):
        return None
    if not isinstance(model.blocks, ClsOnlyBlocks):
        model.blocks = ClsOnlyBlocks(OrderedDict(model.blocks._modules))
    return model.blocks


@contextlib.contextmanager
def reading_cls(model: nn.Module, enabled: bool = True, skip_rows: bool = True) -> Iterator[None]:
    """Within this context a forward of ``model`` to its logits may shorten the last block (when
    :func:`why_not_model` finds nothing against it) and leave unread rows of every block uncomputed
    (``skip_rows``, when :func:`why_not_rows_model` finds nothing against it)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, ClsOnlyBlocks):
        yield
        return
    before = blocks.reads_cls, blocks.skips_rows
    blocks.reads_cls = enabled and why_not_model(model) is None
    blocks.skips_rows = skip_rows and why_not_rows_model(model) is None
    try:
        yield
    finally:
        blocks.reads_cls, blocks.skips_rows = before


def why_not(model: nn.Module) -> str | None:
    """Why a forward of ``model`` to its logits would compute every token of the last block now
    (``None``: only the CLS row)."""
    reason = why_not_model(model)
    if reason is None:
        reason = why_not_block(model.blocks[-1])
    return reason


def why_not_model(model: nn.Module) -> str | None:
    """The model-level conditions: a plain CLS-pooled timm ViT whose blocks end in a shortenable head."""
    if not isinstance(getattr(model, "blocks", None), ClsOnlyBlocks) or len(model.blocks) == 0:
        return "not a timm VisionTransformer"
    if getattr(model, "attn_pool", None) is not None or getattr(model, "global_pool", None) != "token":
        return f"the head pools {getattr(model, 'global_pool', '?')!r}, not the class token"
    if getattr(model, "cls_token", None) is None:
        return "the model has no class token"
    cls = type(model)
    for name in ("forward", "forward_features", "forward_head", "pool"):
        if name in vars(model) or getattr(cls, name) is not getattr(VisionTransformer, name):
            return f"{cls.__name__}.{name} is not timm's VisionTransformer.{name}"
    if getattr(model, "grad_checkpointing", False):
        return "gradient checkpointing runs the blocks itself"
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "a global module hook is registered"
    if _hooks(model.blocks):
        return "a hook on the blocks container would see the CLS row alone"
    if _untokenwise_hooks(model.norm):
        return "a hook on the final norm would see the CLS row alone"
    return None


def why_not_block(block: nn.Module) -> str | None:
    """The last block's conditions (timm's Block and Attention; nothing that needs all rows)."""
    reason = _why_not_rows(block, "the last block", "would see the CLS row alone")
    if reason is not None:
        return reason
    for fn in hooked_functions(block, "output"):
        if _marked(fn) is None:
            return f"{_name(fn)} is hooked at the last block's output and may need all of its rows"
    return None


def why_not_rows_model(model: nn.Module) -> str | None:
    """The model-level conditions for leaving unread rows uncomputed: the blocks run through
    :class:`ClsOnlyBlocks`, and nothing outside the blocks watches them."""
    if not isinstance(getattr(model, "blocks", None), ClsOnlyBlocks) or len(model.blocks) == 0:
        return "not a timm VisionTransformer"
    if getattr(model, "grad_checkpointing", False):
        return "gradient checkpointing runs the blocks itself"
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "a global module hook is registered"
    return None


def why_not_skip(block: nn.Module) -> str | None:
    """Why ``block`` computes every row now (``None``: the rows its first output function never reads
    are left uncomputed). The function must be marked with :func:`ignores_rows`; functions after it see
    the replaced output, as they would anyway."""
    fns = hooked_functions(block, "output")
    if not fns or ignored_rows(fns[0]) is None:
        first = f"{_name(fns[0])} is" if fns else "nothing is"
        return f"{first} hooked first at the block's output with rows it never reads (ignores_rows)"
    return _why_not_rows(block, "the block", "would miss the rows no one reads")


def skippable_rows(block: nn.Module, x: torch.Tensor) -> tuple[int, int] | None:
    """The rows ``(start, stop)`` of ``block``'s output that may be left uncomputed for input ``x``."""
    if why_not_skip(block) is not None:
        return None
    start, stop = ignored_rows(hooked_functions(block, "output")[0])
    return (start, stop) if x.dim() == 3 and stop < x.shape[1] else None


def rows_status(model: nn.Module, skip_rows: bool = True) -> str:
    """In words: in which blocks a forward to the logits leaves unread rows uncomputed, or why none."""
    if not skip_rows:
        return "every row: skip_unread_rows is off"
    reason = why_not_rows_model(model)
    if reason is not None:
        return f"every row: {reason}"
    blocks = list(model.blocks)
    reasons = [why_not_skip(block) for block in blocks]
    skipped = [i for i, r in enumerate(reasons) if r is None]
    if not skipped:
        return f"every row: {reasons[0]}"
    rows = {ignored_rows(hooked_functions(blocks[i], "output")[0]) for i in skipped}
    spans = ", ".join(f"{a}:{b}" for a, b in sorted(rows))
    return f"rows {spans} uncomputed in {len(skipped)} of {len(blocks)} blocks"


def _why_not_rows(block: nn.Module, what: str, consequence: str) -> str | None:
    """What in ``block`` needs every row: anything but timm's Block and Attention, a torch hook on the
    block or its attention, an unmarked hook after ``qkv``, an active dropout after ``qkv``."""
    if type(block) is not Block or not _shortenable_attention(block.attn):
        return f"{what} is {type(block).__name__}, not timm's Block with Attention"
    chains = chain_hook_ids(block)
    if block._forward_pre_hooks or any(k not in chains for k in block._forward_hooks):
        return f"a torch hook on {what} needs all of its rows"
    if _hooks(block.attn):
        return f"a hook on {what}'s attention needs all of its rows"
    qkv_tree = {id(m) for m in block.attn.qkv.modules()} | {id(m) for m in block.norm1.modules()}
    for module in block.modules():
        if id(module) in qkv_tree or module is block or module is block.attn:
            continue
        if _untokenwise_hooks(module):
            return f"a hook on {type(module).__name__} in {what} {consequence}"
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            return f"a dropout after qkv in {what} is active (training mode)"
    return None


def cls_row_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    """timm's ``Block.forward`` for row 0 of its output alone: ``(B, T, D)`` → ``(B, 1, D)``."""
    return rows_forward(block, x, [(0, 1)])


def rows_forward(block: Block, x: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """timm's ``Block.forward`` for the output rows in ``spans`` alone (sorted, disjoint ``(start, stop)``
    ranges): keys and values of every row, queries, attention output, projection and MLP of those rows.
    ``(B, T, D)`` → ``(B, R, D)``, R the number of rows in ``spans``."""
    attn = block.attn
    batch, tokens, _ = x.shape
    heads, head_dim, width = attn.num_heads, attn.head_dim, attn.num_heads * attn.head_dim
    h = block.norm1(x)
    h_rows = _take(h, spans)
    rows = h_rows.shape[1]
    q, kv = _project(attn.qkv, h, h_rows, spans, width)
    q = q.reshape(batch, rows, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if type(attn) is not Attention:  # a wrapper that prepends key/value rows (E²VPT's prompts)
        k, v = attn.extend_kv(k, v)
    if attn.fused_attn:
        o = F.scaled_dot_product_attention(q, k, v)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        o = attn.attn_drop(scores.softmax(dim=-1)) @ v
    o = o.transpose(1, 2).reshape(batch, rows, width)
    scale_norm = getattr(attn, "norm", None)  # timm's scale-norm (Identity when off; absent before 1.0.16)
    if scale_norm is not None:
        o = scale_norm(o)
    if getattr(attn, "gate", None) is not None:  # timm 1.0.28 on
        o = o * attn.gate(h_rows).sigmoid()
    y = _take(x, spans) + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(o))))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


def _shortenable_attention(attn: nn.Module) -> bool:
    """timm's ``Attention``, or a wrapper whose only change to its forward is ``extend_kv(k, v)`` (extra
    key and value rows after ``k_norm``; it says so with ``vprompt_extends_kv``)."""
    return type(attn) is Attention or getattr(attn, "vprompt_extends_kv", False)


def _project(
    qkv: nn.Module, h: torch.Tensor, h_rows: torch.Tensor, spans: list[tuple[int, int]], width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The queries of ``h_rows`` and the keys and values of every row of ``h``, from the fused ``qkv``."""
    if type(qkv) is nn.Linear and not _hooks(qkv):
        weight, bias = qkv.weight, qkv.bias
        q = F.linear(h_rows, weight[:width], None if bias is None else bias[:width])
        kv = F.linear(h, weight[width:], None if bias is None else bias[width:])
        return q, kv
    # a wrapped projection that says how to split itself (LoRA: vprompt.methods.lora.split_projection)
    split = getattr(qkv, "vprompt_split_projection", None)
    if split is not None and not _hooks(qkv):
        parts = split(qkv, h_rows, h, width)
        if parts is not None:
            return parts
    q, kv = qkv(h).split([width, 2 * width], dim=-1)  # anything else runs as it is on every row
    return _take(q, spans), kv


def _take(t: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """The rows of ``t`` (``(B, T, ...)``) in ``spans``, by one ``split`` (whose backward is a single
    concatenation, where each slice's would allocate a gradient the size of ``t``)."""
    bounds, keep = [0], []
    for start, stop in spans:
        if start > bounds[-1]:
            bounds.append(start)
        if stop > start:
            keep.append(len(bounds) - 1)
            bounds.append(stop)
    if bounds[-1] < t.shape[1]:
        bounds.append(t.shape[1])
    parts = t.split([b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)], dim=1)
    kept = [parts[i] for i in keep]
    return kept[0] if len(kept) == 1 else torch.cat(kept, dim=1)


def _hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _untokenwise_hooks(module: nn.Module) -> bool:
    hooks = list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())
    return any(_marked(h) != "tokenwise" for h in hooks)


def _name(fn: Any) -> str:
    fn = getattr(fn, "func", fn)
    return getattr(fn, "__qualname__", type(fn).__name__)
