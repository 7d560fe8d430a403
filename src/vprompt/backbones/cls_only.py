"""Only what the head reads: a CLS-pooled ViT's last block computes the CLS row alone.

:class:`ClsOnlyBlocks` replaces the model's ``blocks`` container; during a forward to the logits its last
block computes the query, attention output, projection and MLP of the CLS row only (keys and values of
every token), and steps aside wherever that would not be exact or cannot be checked.
Design notes: ``docs/design.md``, section ``vprompt/backbones/cls_only.py``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
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


def _marked(fn: Any) -> str | None:
    return getattr(fn, "vprompt_cls_row", None)


class ClsOnlyBlocks(nn.Sequential):
    """timm's ``blocks`` container, whose last block can compute the CLS row alone (see the module)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        #: set by :func:`reading_cls` for the length of a forward to the logits
        self.reads_cls = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reads_cls or len(self) == 0:
            return super().forward(x)
        blocks = list(self)
        for block in blocks[:-1]:
            x = block(x)
        return self.last_block(x)

    def last_block(self, x: torch.Tensor) -> torch.Tensor:
        """The last block on ``x``: the CLS row alone when that is exact now, else all rows."""
        block = self[-1]
        if not self.reads_cls or why_not_block(block) is not None:
            return block(x)
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
def reading_cls(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within this context a forward of ``model`` to its logits may shorten the last block (when
    :func:`why_not_model` finds nothing against it)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, ClsOnlyBlocks):
        yield
        return
    before = blocks.reads_cls
    blocks.reads_cls = enabled and why_not_model(model) is None
    try:
        yield
    finally:
        blocks.reads_cls = before


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
    if type(block) is not Block or not _shortenable_attention(block.attn):
        return f"the last block is {type(block).__name__}, not timm's Block with Attention"
    chains = chain_hook_ids(block)
    if block._forward_pre_hooks or any(k not in chains for k in block._forward_hooks):
        return "a torch hook on the last block needs all of its rows"
    for fn in hooked_functions(block, "output"):
        if _marked(fn) is None:
            return f"{_name(fn)} is hooked at the last block's output and may need all of its rows"
    if _hooks(block.attn):
        return "a hook on the last block's attention needs all of its rows"
    qkv_tree = {id(m) for m in block.attn.qkv.modules()} | {id(m) for m in block.norm1.modules()}
    for module in block.modules():
        if id(module) in qkv_tree or module is block or module is block.attn:
            continue
        if _untokenwise_hooks(module):
            return f"a hook on {type(module).__name__} in the last block would see the CLS row alone"
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            return "a dropout after qkv in the last block is active (training mode)"
    return None


def cls_row_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    """timm's ``Block.forward`` for row 0 of its output alone: ``(B, T, D)`` → ``(B, 1, D)``."""
    attn = block.attn
    batch, tokens, _ = x.shape
    heads, head_dim, width = attn.num_heads, attn.head_dim, attn.attn_dim
    h = block.norm1(x)
    qkv = attn.qkv
    if type(qkv) is nn.Linear and not _hooks(qkv):  # keys and values of every row, one query row
        weight, bias = qkv.weight, qkv.bias
        q = F.linear(h[:, :1], weight[:width], None if bias is None else bias[:width])
        kv = F.linear(h, weight[width:], None if bias is None else bias[width:])
    else:  # a wrapped projection (LoRA): run it as it is on every row
        q, kv = qkv(h).split([width, 2 * width], dim=-1)
        q = q[:, :1]
    q = q.reshape(batch, 1, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if type(attn) is not Attention:  # a wrapper that prepends key/value rows (E²VPT's prompts)
        k, v = attn.extend_kv(k, v)
    if attn.fused_attn:
        o = F.scaled_dot_product_attention(q, k, v)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        o = attn.attn_drop(scores.softmax(dim=-1)) @ v
    o = attn.norm(o.transpose(1, 2).reshape(batch, 1, width))
    if attn.gate is not None:
        o = o * attn.gate(h[:, :1]).sigmoid()
    y = x[:, :1] + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(o))))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


def _shortenable_attention(attn: nn.Module) -> bool:
    """timm's ``Attention``, or a wrapper whose only change to its forward is ``extend_kv(k, v)`` (extra
    key and value rows after ``k_norm``; it says so with ``vprompt_extends_kv``)."""
    return type(attn) is Attention or getattr(attn, "vprompt_extends_kv", False)


def _hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _untokenwise_hooks(module: nn.Module) -> bool:
    hooks = list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())
    return any(_marked(h) != "tokenwise" for h in hooks)


def _name(fn: Any) -> str:
    fn = getattr(fn, "func", fn)
    return getattr(fn, "__qualname__", type(fn).__name__)
