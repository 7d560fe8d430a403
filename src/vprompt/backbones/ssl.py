"""Self-supervised ViT backbones of the VPT/VAPT tables: MAE (timm's weights, pooled as the papers' code
pools them) and MoCo v3 (the official checkpoint files, converted to timm keys, strictly).

Names: ``mae:vit_base_patch16_224`` and ``mocov3:/path/to/vit-b-300ep.pth.tar`` (``vprompt.backbone``).
Design notes: ``docs/design.md``, section ``vprompt/backbones/ssl.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

__all__ = ["MOCOV3_DATA", "MocoV3Checkpoint", "check_mocov3", "mae_arch", "read_mocov3", "use_mae_pooling"]

# ------------------------------------------------------------------------------------------------ MAE


def mae_arch(arch: str) -> str:
    """The timm name with MAE weights that ``mae:<arch>`` means (``.mae`` added when no tag is given)."""
    name = arch if "." in arch else f"{arch}.mae"
    known = timm.list_pretrained("vit_*.mae")
    if name not in known:
        raise ValueError(
            f"mae:{arch}: no timm ViT with MAE weights is called {name!r}; use one of: {', '.join(known)}"
        )
    return name


def use_mae_pooling(model: nn.Module) -> None:
    """Pool a timm ViT as MAE's fine-tuning code and the VPT/VAPT code do for MAE (in place).

    The mean of the tokens after the prefix (the class token) goes through a new LayerNorm with unit
    weight and zero bias (``fc_norm``, the final norm's eps); the final norm after the blocks and its
    pretrained weights are dropped (that code loads the MAE checkpoint with ``strict=False``, and its
    ``norm.*`` keys go unused).
    """
    norm = model.norm
    if not isinstance(norm, nn.LayerNorm):
        raise ValueError(f"MAE pooling needs a ViT with a final LayerNorm, not {type(norm).__name__}")
    fc_norm = type(norm)(
        norm.normalized_shape, eps=norm.eps, device=norm.weight.device, dtype=norm.weight.dtype
    )
    model.norm = nn.Identity()
    model.fc_norm = fc_norm
    model.global_pool = "avg"


# -------------------------------------------------------------------------------------------- MoCo v3

#: the checkpoints' own preprocessing (moco-v3 main_lincls.py: ImageNet mean/std, Resize 256 + crop 224)
MOCOV3_DATA: dict[str, Any] = {
    "mean": IMAGENET_DEFAULT_MEAN,
    "std": IMAGENET_DEFAULT_STD,
    "interpolation": "bilinear",
    "crop_pct": 224 / 256,
    "crop_mode": "center",
}
#: MoCo v3 ``arch`` → timm architecture and the arguments that make it the same network
_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_base": ("vit_base_patch16_224", {}),
    "vit_small": ("vit_small_patch16_224", {"num_heads": 12}),  # MoCo v3's ViT-S has 12 heads, timm's 6
}
_PRE = "module.base_encoder."
#: parts of a pre-training checkpoint that are not the encoder: its projector MLP (``head``), the
#: momentum encoder and the predictor
_NOT_ENCODER = ("module.base_encoder.head.", "module.momentum_encoder.", "module.predictor.")


@dataclass
class MocoV3Checkpoint:
    """A MoCo v3 ViT checkpoint in timm keys."""

    #: ``pre-training`` (vit-b-300ep.pth.tar), ``linear`` (linear-vit-b-300ep.pth.tar, with its
    #: ImageNet-1k linear classifier) or ``deit`` (written by moco-v3's convert_to_deit.py)
    kind: str
    #: timm architecture and its arguments
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    #: number of checkpoint keys left out on purpose (projector, momentum encoder, predictor)
    dropped: int = 0


def read_mocov3(path: str | Path) -> MocoV3Checkpoint:
    """Read an official MoCo v3 ViT checkpoint (``torch.load(weights_only=True)``) into timm keys.

    Three layouts are recognised: ``{"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*",
    "module.predictor.*"}}`` (pre-training: the base encoder without its projector ``head`` is kept),
    ``{"state_dict": {"module.*"}}`` (linear classification: the encoder and its 1000-class ``head``) and
    ``{"model": {...}}`` (``convert_to_deit.py``). Anything else is an error naming the keys.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MoCo v3 checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file, or one that needs code to unpickle
        raise ValueError(f"could not read MoCo v3 checkpoint {path}: {' '.join(str(e).split())[:300]}") from e
    if not isinstance(checkpoint, dict) or not ({"state_dict", "model"} & set(checkpoint)):
        top = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not a MoCo v3 checkpoint: no 'state_dict' or 'model' in it (found {top})"
        )
    source = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint["model"]
    if not isinstance(source, dict) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise ValueError(f"{path}: the MoCo v3 state dict is not a mapping of names to tensors")

    dropped = 0
    if "state_dict" in checkpoint and any(k.startswith(_PRE) for k in source):
        kind, state, unknown = "pre-training", {}, []
        for key, value in source.items():
            if key.startswith(_NOT_ENCODER):
                dropped += 1
            elif key.startswith(_PRE):
                state[key[len(_PRE) :]] = value
            else:
                unknown.append(key)
    elif "state_dict" in checkpoint:
        kind = "linear"
        state = {k[len("module.") :]: v for k, v in source.items() if k.startswith("module.")}
        unknown = [k for k in source if not k.startswith("module.")]
    else:
        kind, state, unknown = "deit", dict(source), []
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} key(s) outside the MoCo v3 {kind} layout: {_listed(sorted(unknown))}"
        )

    arch_name = checkpoint.get("arch")
    if arch_name is None:  # convert_to_deit.py does not keep it: the width says
        width = state["cls_token"].shape[-1] if "cls_token" in state else None
        arch_name = "vit_small" if width == 384 else "vit_base"
    if arch_name not in _ARCHS:
        raise ValueError(
            f"{path}: MoCo v3 architecture {arch_name!r} is not supported; vprompt reads the plain ViT "
            f"checkpoints ({', '.join(_ARCHS)}), not the ResNet or conv-stem ('vit_conv_*') ones"
        )
    arch, kwargs = _ARCHS[arch_name]
    return MocoV3Checkpoint(kind, arch, dict(kwargs), state, dropped)


def check_mocov3(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise ``ValueError`` listing every mismatch unless ``state`` has exactly ``model``'s keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} vs {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or wrong:
        parts = [
            f"{what} ({len(keys)}): {_listed(keys)}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise ValueError(f"{path}: MoCo v3 weights do not fit the ViT: {'; '.join(parts)}")


def _listed(keys: list[str], limit: int = 12) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
