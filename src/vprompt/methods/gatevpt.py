"""Gated prompt tuning (GateVPT): shallow VPT prompts that each block updates only as far as its gate opens.

Yoo et al., "Improving Visual Prompt Tuning for Self-supervised Vision Transformers" (ICML 2023); pinned
against the official code (ryongithub/GatedPromptTuning) by ``tests/methods/test_gatevpt.py``.
Defaults are the official README's run (``run.sh cub mae_vitb16 64 0.1 100 5``: 100 prompts, gate logits -5).
Design notes: ``docs/design.md``, section ``vprompt/methods/gatevpt.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from ..backbones import Backbone
from .base import MethodConfig, MethodNotApplicable, register_method
from .vpt import TOKEN_FAMILIES, TokenGeometry, VPTShallow, pool_prompts_field, split_tokens

#: the official clamp of the learned attention temperatures (``TEMP_MIN``, ``TEMP_MAX``)
TEMPERATURE_RANGE = (0.01, 10.0)


@dataclass
class GateVPTConfig(MethodConfig):
    num_prompts: int = field(default=100, metadata={"help": "number of prompt tokens N_p (inserted once)"})
    gate_init: float = field(
        default=5.0,
        metadata={
            "help": "every block's gate logit starts at -gate_init (5: the gates start at sigmoid(-5) = 0.0067)"
        },
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout on the prompts as they are inserted"})
    temperature: bool = field(
        default=True,
        metadata={
            "help": "learn one attention temperature per block (attention logits / tau, tau from 1, "
            "clamped to [0.01, 10]); --no-temperature (temperature=false): the backbone's own attention"
        },
    )
    pool_prompts: bool | None = pool_prompts_field()


@register_method(order=100)
class GateVPT(VPTShallow):
    name = "gatevpt"
    summary = (
        "gated VPT: N_p prompts inserted before block 0; after each block but the last, a learned gate mixes "
        "the block's prompt outputs with its prompt inputs"
    )
    families = TOKEN_FAMILIES
    config_class = GateVPTConfig
    deep = False
    default_dropout = 0.1

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        if not math.isfinite(c.gate_init):
            raise MethodNotApplicable(f"gatevpt gate_init must be a finite number, got {c.gate_init}")
        geo = TokenGeometry.of(self, backbone)
        blocks = [backbone.site(f"block.{i}").module for i in range(geo.depth)]
        queries = (
            [query_projection(self, i, block, geo.dim) for i, block in enumerate(blocks)]
            if c.temperature
            else []
        )
        super().attach(backbone)  # prompts (1, N_p, D): inserted at embed, removed after the last block
        # (or left for an average-pooling head: pool_prompts)
        #: gate logit of blocks 0..L-2 (the last block has none, as the official code: its prompt outputs
        #: are removed, or pooled as they are)
        self.gate_logits = nn.Parameter(torch.full((geo.depth - 1,), -float(c.gate_init)))
        for i, block in enumerate(blocks[:-1]):  # a torch hook: the gate needs the block's input too
            self._handles.append(block.register_forward_hook(partial(self._gate, i)))
        #: attention temperature of every block, ``(L,)`` (absent when ``temperature`` is off)
        self.temperatures = nn.Parameter(torch.ones(geo.depth)) if c.temperature else None
        for i, qkv in enumerate(queries):
            self._handles.append(qkv.register_forward_hook(partial(self._shape_attention, i)))

    def gates(self) -> torch.Tensor:
        """The gate of every block but the last, ``sigmoid(gate_logits)``: ``(L-1,)``."""
        return self.gate_logits.sigmoid()

    def _gate(self, i: int, _module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        """Block ``i``'s prompt slots become ``g·(its prompt outputs) + (1-g)·(its prompt inputs)``."""
        prefix, num_prompts = self.geometry.prefix, self.prompts.shape[1]
        head, prompt_out, patches = split_tokens(out, prefix, num_prompts)
        _, prompt_in, _ = split_tokens(args[0], prefix, num_prompts)
        gate = self.gate_logits[i].sigmoid().to(out.dtype)
        return torch.cat([head, gate * prompt_out + (1 - gate) * prompt_in, patches], dim=1)

    def temperature(self, i: int) -> torch.Tensor:
        """Block ``i``'s temperature as the forward uses it: clamped to :data:`TEMPERATURE_RANGE`, with
        the gradient of the stored value (the official code clamps the stored value itself, in place,
        before every forward; :meth:`_insert` does that too in training)."""
        tau = self.temperatures[i]
        return tau + (tau.detach().clamp(*TEMPERATURE_RANGE) - tau.detach())

    def _shape_attention(self, i: int, _module: nn.Module, _args: Any, qkv: torch.Tensor) -> torch.Tensor:
        """Divide block ``i``'s attention logits by its temperature: its queries, ``q / tau``."""
        width = qkv.shape[-1] // 3
        q, kv = qkv.split([width, 2 * width], dim=-1)
        return torch.cat([q / self.temperature(i).to(qkv.dtype), kv], dim=-1)

    def _insert(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.temperatures is not None:  # projected as the official reinit_temp()
            with torch.no_grad():
                self.temperatures.clamp_(*TEMPERATURE_RANGE)
        return super()._insert(x)


def query_projection(method: GateVPT, index: int, block: nn.Module, dim: int) -> nn.Linear:
    """Block ``index``'s fused query/key/value projection (``attn.qkv``, ``D → 3·D``), whose query third a
    temperature scales; refused where scaling it would not scale the attention logits alone."""
    attn = getattr(block, "attn", None)
    qkv = getattr(attn, "qkv", None)
    why = None
    if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * dim:
        why = "has no fused qkv projection (attn.qkv, D → 3·D)"
    elif not isinstance(getattr(attn, "q_norm", nn.Identity()), nn.Identity):
        why = "normalises its queries after the projection (qk_norm), which would undo the temperature"
    if why is not None:
        raise MethodNotApplicable(
            f"{method.name} temperature: block {index} ({type(block).__name__}) {why}; "
            "attach with temperature=false"
        )
    return qkv
