"""vprompt's adapter files: their names, reading them back with every check, and rebuilding the backbone they name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_type_hints

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from ..backbones import Backbone, create_backbone
from ..files import refuse_non_finite
from ..options import coerce

#: vprompt's own files (names of their own: peft's are ``adapter_config.json`` / ``adapter_model.safetensors``,
#: which a LoRA model writes as well, see :mod:`.peft_format`)
WEIGHTS_FILE = "vprompt_model.safetensors"
CONFIG_FILE = "vprompt_config.json"
#: the names used before 0.1.0's peft-format files; still read
LEGACY_FILES = ("adapter.safetensors", "adapter_config.json")
FORMAT_VERSION = 1
#: a run folder's config and its adapter folder (see :mod:`vprompt.engine.rundir`)
RUN_CONFIG, RUN_ADAPTER = "config.yaml", "adapter"


def check_backbone_matches(config: dict[str, Any], backbone: Backbone) -> None:
    """Refuse to load an adapter onto a backbone other than the one it was trained on."""
    saved = config["backbone"]
    here = {"name": backbone.name, "img_size": backbone.input_size[-1], "num_classes": backbone.num_classes}
    wrong = {k: (saved[k], v) for k, v in here.items() if saved.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in wrong.items())
        raise ValueError(f"adapter was trained on another backbone ({details})")


def _own_file(directory: str | Path, name: str, legacy: str) -> Path:
    """``directory/name``, or the file's pre-0.1.0 name when only that exists."""
    path = Path(directory) / name
    if not path.is_file() and (Path(directory) / legacy).is_file():
        return Path(directory) / legacy
    return path


def has_config(directory: str | Path) -> bool:
    """Whether ``directory`` holds a vprompt adapter config (current or legacy name)."""
    path = _own_file(directory, CONFIG_FILE, LEGACY_FILES[1])
    if path.name == CONFIG_FILE:
        return path.is_file()
    try:
        return "format" in json.loads(path.read_text(encoding="utf-8"))  # not peft's file of that name
    except (OSError, ValueError, TypeError):
        return False


def read_config(directory: str | Path) -> dict[str, Any]:
    path = _own_file(directory, CONFIG_FILE, LEGACY_FILES[1])
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the adapter config is damaged") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not an adapter config (expected a JSON object)")
    if config.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported adapter format {config.get('format')!r}")
    backbone = config.get("backbone")
    problems = [
        k
        for k, kind in (("method", str), ("options", dict), ("backbone", dict))
        if not isinstance(config.get(k), kind)
    ]
    if isinstance(backbone, dict) and not isinstance(backbone.get("build_args"), dict):
        problems.append("backbone.build_args")
    names = config.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        problems.append("class_names")
    if not isinstance(config.get("preprocessing", {}), dict):
        problems.append("preprocessing")
    if problems:
        raise ValueError(f"{path}: damaged adapter config (missing or wrong: {', '.join(problems)})")
    refuse_non_finite(config, path)
    return config


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    path = _own_file(directory, WEIGHTS_FILE, LEGACY_FILES[0])
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {directory}")
    try:
        state = load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{path}: damaged or not a safetensors file ({e})") from None
    refuse_non_finite(state, path)
    return state


def rebuild_backbone(build_args: dict[str, Any], where: Path) -> Backbone:
    """The backbone an adapter config's ``build_args`` describe (its other keys go to timm); a wrongly
    typed or unknown argument is one error naming the file, the key and what it expects."""
    hints = get_type_hints(create_backbone)
    try:
        args = {k: coerce(k, v, hints[k]) if k in hints else v for k, v in build_args.items()}
        return create_backbone(**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: backbone.build_args: {e}; the adapter config is damaged") from None
