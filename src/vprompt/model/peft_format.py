"""peft's own adapter format: files ``peft.PeftModel.from_pretrained`` loads, and back, for every method
that names its ``peft_type`` (LoRA); the method maps its options and tensor names, this module the rest.

Design notes: ``docs/design.md``, section ``vprompt/model/peft_format.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..backbones import Backbone
from ..files import refuse_non_finite, write_bytes, write_text
from ..methods import METHODS, Method, MethodConfig

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
#: peft's prefix of every key in a PeftModel's state dict
_PREFIX = "base_model.model."
_OURS = "backbone.model."


def is_peft_folder(directory: Path) -> bool:
    """Whether ``directory`` holds a peft adapter (``adapter_config.json`` with a ``peft_type``)."""
    try:
        config = json.loads((directory / PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "peft_type" in config


def save_peft(method: Method, backbone: Backbone, state: dict[str, torch.Tensor], directory: Path) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` as peft's ``save_pretrained`` does;
    ``state`` is the model's trainable state (keys as in :class:`~vprompt.model.TunedModel`)."""
    peft_state = {}
    for key, value in state.items():
        if not key.startswith(_OURS):
            raise ValueError(
                f"{method.name} state key {key!r} is not inside the backbone; peft cannot hold it"
            )
        peft_state[_PREFIX + method.peft_key(key[len(_OURS) :])] = value
    config = method.peft_config(backbone)
    write_bytes(directory / PEFT_WEIGHTS, save(peft_state))
    write_text(directory / PEFT_CONFIG, json.dumps(config, indent=2, default=str) + "\n")


def read_peft_config(directory: Path, backbone: Backbone | None) -> tuple[str, MethodConfig]:
    """The method and its options of the peft adapter in ``directory``, for ``backbone`` (the same model
    peft adapted)."""
    path = directory / PEFT_CONFIG
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable peft adapter config ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a peft adapter config (expected a JSON object)")
    refuse_non_finite(config, path)
    readable = [m for m in METHODS.values() if m.peft_type is not None]
    method = next((m for m in readable if m.peft_type == config.get("peft_type")), None)
    if method is None:
        raise ValueError(
            f"{path}: a peft {config.get('peft_type')} adapter; vprompt reads peft's "
            f"{' and '.join(m.__name__ for m in readable)} only"
        )
    if backbone is None:
        raise ValueError(
            f"{directory} is a peft adapter, which does not say how to build its model: pass the backbone "
            "it was trained on (vprompt.backbone(...), or backbone=... in from_pretrained)"
        )
    return method.name, method.from_peft_config(config, backbone, path)


def read_peft_weights(directory: Path, method: str, backbone: Backbone) -> dict[str, torch.Tensor]:
    """The trainable state (keys as in ``TunedModel``) in the peft adapter folder ``directory``."""
    weights = directory / PEFT_WEIGHTS
    try:
        state = load(weights.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{weights}: missing, damaged or not a safetensors file ({e})") from None
    refuse_non_finite(state, weights)
    if not hasattr(backbone.model, "model"):  # saved by peft from a PeftModel over the Backbone itself
        state = {re.sub(rf"^{re.escape(_PREFIX)}model\.", _PREFIX, k): v for k, v in state.items()}
    return {_from_peft(METHODS[method], k): v for k, v in state.items()}


def _from_peft(method: type[Method], key: str) -> str:
    if not key.startswith(_PREFIX):
        raise ValueError(f"not a peft PeftModel key: {key!r}")
    return _OURS + method.from_peft_key(key[len(_PREFIX) :])
