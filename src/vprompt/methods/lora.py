"""LoRA: low-rank updates of chosen Linear / Conv2d layers, injected with the peft library.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022); :meth:`LoRA.detach` puts
the original modules back.
Design notes: ``docs/design.md``, section ``vprompt/methods/lora.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from .base import Method, MethodConfig, MethodNotApplicable, check_size, register_method

ADAPTER_NAME = "default"
_ADAPTER = f".{ADAPTER_NAME}."
#: LoraConfig fields vprompt's LoRA does not have, with the value that means "not used"
_UNSUPPORTED = {
    "use_dora": False,
    "use_rslora": False,
    "lora_bias": False,
    "bias": "none",
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "exclude_modules": None,
    "target_parameters": None,
    "fan_in_fan_out": False,
}


@dataclass
class LoRAConfig(MethodConfig):
    r: int = field(default=8, metadata={"help": "rank of the low-rank update"})
    alpha: float = field(
        default=8.0, metadata={"help": "scaling numerator: the update is scaled by alpha / r"}
    )
    dropout: float = field(
        default=0.0, metadata={"help": "dropout on the LoRA branch's input (training only)"}
    )
    targets: str = field(
        default="auto",
        metadata={
            "help": "auto = attention qkv projections in transformers, non-grouped convolutions in CNNs; "
            "or comma-separated module-name suffixes, matched inside the blocks only (a module outside "
            "them, e.g. patch_embed.proj, is named in full)"
        },
    )


def _in_head(name: str, head_name: str) -> bool:
    return name == head_name or name.startswith(head_name + ".")


def resolve_targets(
    model: nn.Module, head_name: str, targets: str, r: int, blocks: Iterable[str] = ()
) -> list[str]:
    """Exact dotted names (inside ``model``) of the layers LoRA adapts; ``MethodNotApplicable`` otherwise.
    A suffix matches modules inside ``blocks`` (the backbone's ``block.N`` modules) only, where there are
    blocks: ``proj`` is each block's attention projection, never the patch embedding's; a name given in
    full matches wherever it is."""
    blocks = tuple(b + "." for b in blocks)
    modules = [(n, m) for n, m in model.named_modules() if n and not _in_head(n, head_name)]
    spec = targets.strip()
    if spec == "auto":
        names = [n for n, m in modules if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] == "qkv"]
        if not names:
            names = [n for n, m in modules if isinstance(m, nn.Conv2d) and m.groups == 1]
        if not names:
            raise MethodNotApplicable(
                "lora targets=auto found no attention qkv Linear and no non-grouped Conv2d outside the head; "
                "give targets as module-name suffixes"
            )
    else:
        suffixes = [s.strip() for s in spec.split(",") if s.strip()]
        if not suffixes:
            raise MethodNotApplicable(
                "lora targets is empty; use 'auto' or comma-separated module-name suffixes"
            )

        def matches(name: str, suffix: str) -> bool:
            inside = not blocks or name.startswith(blocks)
            return name == suffix or (inside and name.endswith("." + suffix))

        names = [n for n, _ in modules if any(matches(n, s) for s in suffixes)]  # in module order
        unmatched = [s for s in suffixes if not any(matches(n, s) for n in names)]
        if unmatched:
            raise MethodNotApplicable(
                f"lora targets {', '.join(map(repr, unmatched))} match no module of the blocks (outside the "
                "classifier head); name a module outside the blocks in full (e.g. patch_embed.proj)"
            )
        by_name = dict(modules)
        wrong = [
            f"{n} ({type(by_name[n]).__name__})"
            for n in names
            if not isinstance(by_name[n], nn.Linear | nn.Conv2d)
        ]
        if wrong:
            raise MethodNotApplicable(
                f"lora adapts Linear and Conv2d layers only; targets {targets!r} also match: {', '.join(wrong[:5])}"
            )
    by_name = dict(modules)
    for n in names:
        m = by_name[n]
        if isinstance(m, nn.Conv2d):
            # peft builds the conv LoRA branch from kernel size, stride and padding only
            if tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros":
                raise MethodNotApplicable(
                    f"lora (peft) cannot adapt {n}: dilation {tuple(m.dilation)}, padding mode {m.padding_mode!r}"
                )
            if r % m.groups:
                raise MethodNotApplicable(f"lora rank {r} is not divisible by the groups ({m.groups}) of {n}")
    return names


def split_projection(
    layer: nn.Module, h_rows: torch.Tensor, h: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """peft's LoRA ``Linear`` forward, its first ``width`` outputs (the queries of a fused ``qkv``) for
    ``h_rows`` only and the others for every row of ``h``: ``base(x) + lora_B(lora_A(x)) · scaling`` per
    output row, as peft computes it. ``None`` (run the layer whole) unless it is that plain case: one
    active adapter, not merged, a plain ``Linear`` base, no bias or variant on the LoRA branch, no
    hooks, and no active LoRA dropout (whose masks would differ from the whole layer's)."""
    base = getattr(layer, "base_layer", None)
    adapters = list(getattr(layer, "active_adapters", ()))
    if (
        type(base) is not nn.Linear
        or layer.disable_adapters
        or layer.merged
        or len(adapters) != 1
        or adapters[0] not in layer.lora_A
        or adapters[0] in getattr(layer, "lora_variant", {})
    ):
        return None
    name = adapters[0]
    lora_a, lora_b, dropout = layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name]
    modules = (base, lora_a, lora_b, dropout)
    if any(m._forward_hooks or m._forward_pre_hooks for m in modules) or lora_b.bias is not None:
        return None
    if type(lora_a) is not nn.Linear or type(lora_b) is not nn.Linear or lora_a.bias is not None:
        return None
    if not isinstance(dropout, nn.Identity) and (dropout.training and dropout.p > 0):
        return None
    scaling = layer.scaling[name]
    cast = getattr(layer, "_cast_input_dtype", None) or (lambda x, dtype: x.to(dtype))  # before peft 0.15

    def part(x: torch.Tensor, rows: slice) -> torch.Tensor:
        bias = None if base.bias is None else base.bias[rows]
        out = F.linear(x, base.weight[rows], bias)
        low = lora_a(cast(x, lora_a.weight.dtype))
        return (out + F.linear(low, lora_b.weight[rows]) * scaling).to(out.dtype)

    return part(h_rows, slice(None, width)), part(h, slice(width, None))


def max_rank(layer: nn.Module) -> int:
    """The largest rank a LoRA update ``B A`` of ``layer`` can have: its input (per output) or output size."""
    if isinstance(layer, nn.Conv2d):  # A is a conv with the layer's kernel: in/groups · kh · kw inputs
        return min(
            layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1],
            layer.out_channels,
        )
    return min(layer.in_features, layer.out_features)


@register_method(order=130)
class LoRA(Method):
    name = "lora"
    summary = "low-rank updates (peft) of attention qkv (transformers) or non-grouped convolutions (CNNs)"
    config_class = LoRAConfig

    def __init__(self, config: LoRAConfig | None = None):
        super().__init__(config)
        #: exact names (inside ``backbone.model``) of the adapted layers, set by ``attach``
        self.target_names: list[str] = []
        # the peft layers, kept in a plain list so they are not registered as this module's children
        self._layers: list[nn.Module] = []
        self._injected = False

    def attach(self, backbone: Backbone) -> None:
        import peft
        from peft.tuners.tuners_utils import BaseTunerLayer

        cfg = self.config
        model = backbone.model
        if hasattr(model, "peft_config"):
            raise MethodNotApplicable(f"backbone {backbone.name!r} already carries peft adapters")
        block_modules = {id(s.module) for name, s in backbone.sites.items() if name.startswith("block.")}
        blocks = [n for n, m in model.named_modules() if n and id(m) in block_modules]
        names = resolve_targets(model, backbone.head_name, cfg.targets, cfg.r, blocks)
        smallest = min(names, key=lambda n: max_rank(model.get_submodule(n)))
        high = max_rank(model.get_submodule(smallest))
        check_size(self, "r", cfg.r, high, f"the largest rank of an update of target {smallest}")
        peft_config = peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            # a full-match regex of the exact names: peft would also match list entries as suffixes
            target_modules="|".join(re.escape(n) for n in names),
            bias="none",
        )
        self.target_names, self._injected = names, True
        peft.inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER_NAME)
        self._layers = [model.get_submodule(n) for n in names]
        for layer in self._layers:  # a block computing some rows' queries only may split the projection
            layer.vprompt_split_projection = split_projection
        wrapped = {n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
        if wrapped != set(names) or not all(isinstance(m, BaseTunerLayer) for m in self._layers):
            raise RuntimeError(f"peft adapted {sorted(wrapped)[:5]}..., expected {names[:5]}...")
        self.train(self.training)

    def detach(self, backbone: Backbone) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        model = backbone.model
        for name in self.target_names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = getattr(parent, child)
            while isinstance(layer, BaseTunerLayer):
                layer = layer.base_layer
            setattr(parent, child, layer)
        if self._injected and "peft_config" in vars(model):
            del model.peft_config  # peft's record of the injected config
        self.target_names, self._layers, self._injected = [], [], False
        super().detach(backbone)

    can_merge = True

    def merge(self, backbone: Backbone) -> None:
        """peft's ``merge_and_unload``: ``W += (alpha / r) · B A`` in every target, then the plain layers."""
        for layer in self._layers:
            layer.merge(adapter_names=[ADAPTER_NAME])
        self.detach(backbone)

    def backbone_parameters(self, backbone: Backbone) -> Iterable[nn.Parameter]:
        for layer in self._layers:
            yield from layer.lora_A.parameters()
            yield from layer.lora_B.parameters()

    # ------------------------------------------------------------------------------ peft's format

    peft_type = "LORA"

    def peft_config(self, backbone: Backbone) -> dict[str, Any]:
        """The ``peft.LoraConfig`` equivalent to this LoRA (targets by exact name, head saved), as a dict."""
        import peft

        cfg = self.config
        config = peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(self.target_names),
            modules_to_save=[backbone.head_name] if self.trains_head else None,
            bias="none",
            base_model_name_or_path=backbone.name,
        ).to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}

    def peft_key(self, key: str) -> str:
        return key.replace(_ADAPTER, ".")  # peft's files leave out the adapter's name

    @classmethod
    def from_peft_config(cls, config: dict[str, Any], backbone: Backbone, path: Path) -> LoRAConfig:
        different = [
            f"{k}={config[k]!r}" for k, off in _UNSUPPORTED.items() if config.get(k, off) not in (off, None)
        ]
        if different:
            raise ValueError(
                f"{path}: peft LoRA options vprompt's lora does not support: {', '.join(different)}"
            )
        targets = config.get("target_modules")
        names = [n for n, _ in backbone.model.named_modules() if n]
        if isinstance(targets, str):  # peft: a regex that must match the whole module name
            targets = [n for n in names if re.fullmatch(targets, n)]
        if not targets:
            raise ValueError(f"{path}: no target_modules")
        saved_head = config.get("modules_to_save") or []
        if backbone.head_name not in saved_head:
            raise ValueError(
                f"{path}: the classifier head {backbone.head_name!r} is not saved "
                f"(modules_to_save={saved_head}); vprompt trains it with LoRA, so save it with modules_to_save=[head]"
            )
        return LoRAConfig(
            r=int(config["r"]),
            alpha=float(config.get("lora_alpha", 8)),
            dropout=float(config.get("lora_dropout", 0.0)),
            targets=",".join(targets),
        )

    @classmethod
    def from_peft_key(cls, key: str) -> str:
        return re.sub(r"\.(lora_[AB])\.", rf".\1{_ADAPTER}", key)

    def train(self, mode: bool = True) -> LoRA:
        # the LoRA branches sit inside the backbone, which TunedModel keeps in eval mode; their dropout
        # follows the method instead (TunedModel.train sets the backbone to eval first, then the method)
        super().train(mode)
        for layer in self._layers:
            layer.lora_dropout.train(mode)
        return self
