"""peft's own adapter format for LoRA: files ``peft.PeftModel.from_pretrained`` loads, and back.

Design notes: ``docs/design.md``, section ``vprompt/methods/peft_format.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load, save

from ..backbones import Backbone
from ..files import refuse_non_finite, write_bytes, write_text
from .lora import ADAPTER_NAME, LoRAConfig

if TYPE_CHECKING:
    from .tuned import TunedModel

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
#: peft's prefix of every key in a PeftModel's state dict
_PREFIX = "base_model.model."
_OURS = "backbone.model."
_ADAPTER = f".{ADAPTER_NAME}."


def is_peft_folder(directory: Path) -> bool:
    """Whether ``directory`` holds a peft adapter (``adapter_config.json`` with a ``peft_type``)."""
    try:
        config = json.loads((directory / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "peft_type" in config


def peft_config(model: TunedModel):
    """The ``peft.LoraConfig`` equivalent to ``model``'s LoRA (targets by exact name, head saved)."""
    import peft

    cfg, bb = model.method.config, model.backbone
    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(model.method.target_names),
        modules_to_save=[bb.head_name] if model.method.trains_head else None,
        bias="none",
        base_model_name_or_path=bb.name,
    )


def save_peft(model: TunedModel, directory: Path) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` as peft's ``save_pretrained`` does."""
    state = {}
    for key, value in model.trainable_state_dict().items():
        if not key.startswith(_OURS):
            raise ValueError(f"lora state key {key!r} is not inside the backbone; peft cannot hold it")
        state[_PREFIX + key[len(_OURS) :].replace(_ADAPTER, ".")] = value
    config = peft_config(model).to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    write_bytes(directory / PEFT_WEIGHTS, save(state))
    write_text(directory / PEFT_CONFIG, json.dumps(config, indent=2, default=str) + "\n")


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


def load_peft(directory: Path, backbone: Backbone | None) -> TunedModel:
    """A vprompt LoRA model from a peft adapter folder, on ``backbone`` (the same model peft adapted)."""
    from . import attach

    path = directory / PEFT_CONFIG
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable peft adapter config ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a peft adapter config (expected a JSON object)")
    refuse_non_finite(config, path)
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: a peft {config.get('peft_type')} adapter; vprompt reads peft's LoRA only")
    if backbone is None:
        raise ValueError(
            f"{directory} is a peft adapter, which does not say how to build its model: pass the backbone "
            "it was trained on (vprompt.backbone(...), or backbone=... in from_pretrained)"
        )
    different = [
        f"{k}={config[k]!r}" for k, off in _UNSUPPORTED.items() if config.get(k, off) not in (off, None)
    ]
    if different:
        raise ValueError(f"{path}: peft LoRA options vprompt's lora does not support: {', '.join(different)}")
    targets = config.get("target_modules")
    names = [n for n, _ in backbone.model.named_modules() if n]
    if isinstance(targets, str):  # peft: a regex that must match the whole module name
        targets = [n for n in names if re.fullmatch(targets, n)]
    if not targets:
        raise ValueError(f"{path}: no target_modules")
    saved_head = config.get("modules_to_save") or []
    if backbone.head_name not in saved_head:
        raise ValueError(
            f"{path}: the classifier head {backbone.head_name!r} is not saved (modules_to_save={saved_head}); "
            "vprompt trains it with LoRA, so save it with modules_to_save=[head]"
        )
    options = LoRAConfig(
        r=int(config["r"]),
        alpha=float(config.get("lora_alpha", 8)),
        dropout=float(config.get("lora_dropout", 0.0)),
        targets=",".join(targets),
    )
    model = attach(backbone, "lora", **options.to_dict())
    weights = directory / PEFT_WEIGHTS
    try:
        state = load(weights.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{weights}: missing, damaged or not a safetensors file ({e})") from None
    refuse_non_finite(state, weights)
    if not hasattr(backbone.model, "model"):  # saved by peft from a PeftModel over the Backbone itself
        state = {re.sub(rf"^{re.escape(_PREFIX)}model\.", _PREFIX, k): v for k, v in state.items()}
    model.load_trainable_state_dict({_from_peft(k): v for k, v in state.items()})
    return model


def _from_peft(key: str) -> str:
    if not key.startswith(_PREFIX):
        raise ValueError(f"not a peft PeftModel key: {key!r}")
    key = key[len(_PREFIX) :]
    key = re.sub(r"\.(lora_[AB])\.", rf".\1{_ADAPTER}", key)
    return _OURS + key
