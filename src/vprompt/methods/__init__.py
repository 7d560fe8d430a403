"""Methods: what is trained and where. One file per method; this module is the front door.

model = vprompt.attach(backbone, "ap", site="block.6", shape="channel")
model.print_trainable_parameters()
model.save_pretrained("run/adapter")
model = vprompt.load_adapter("run/adapter", backbone)
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

from ..backbones import Backbone, create_backbone
from .aap import AdaptiveActivationPrompt
from .adapter import Adapter
from .ap import ActivationPrompt, APConfig
from .base import Method, MethodConfig, MethodNotApplicable
from .baselines import BitFit, FullFineTuning, LinearProbe, NormTuning
from .gatevpt import GateVPT
from .hub import HubUnavailableError, local_folder
from .lora import LoRA
from .peft_format import is_peft_folder, load_peft
from .tuned import CONFIG_FILE, TunedModel, check_backbone_matches, has_config, read_config, read_weights
from .vapt import VAPT
from .vp import ExpansivePrompt, PadPrompt
from .vpt import VPTDeep, VPTShallow

#: a run folder's config and its adapter folder (see :mod:`vprompt.engine.rundir`)
RUN_CONFIG, RUN_ADAPTER = "config.yaml", "adapter"

_METHODS: list[type[Method]] = [
    LinearProbe,
    FullFineTuning,
    ActivationPrompt,
    AdaptiveActivationPrompt,
    PadPrompt,
    ExpansivePrompt,
    VPTShallow,
    VPTDeep,
    VAPT,
    GateVPT,
    NormTuning,
    BitFit,
    LoRA,
    Adapter,
]

#: name -> method class, in the order ``vprompt methods`` lists them
METHODS: dict[str, type[Method]] = {m.name: m for m in _METHODS}
#: methods acting at one site with AP's ``site`` and ``shape`` options (what ``sweep layers`` moves)
SITE_METHODS: list[str] = [m.name for m in _METHODS if issubclass(m.config_class, APConfig)]


def method_config(name: str, **options: Any) -> MethodConfig:
    """The config of method ``name`` with ``options``; unknown names or options list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    config_class = METHODS[name].config_class
    valid = [f.name for f in fields(config_class)]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(
            f"method {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(valid) or '(none)'}"
        )
    return config_class(**options)


def attach(backbone: Backbone, method: str | Method, **options: Any) -> TunedModel:
    """Attach a method to ``backbone`` (frozen otherwise) and return the trainable model."""
    if isinstance(method, str):
        config = method_config(method, **options)  # unknown names and options are clear errors
        method = METHODS[method](config)
    elif options:
        raise ValueError("pass options either in the Method's config or as keywords, not both")
    return TunedModel(backbone, method)


def load_adapter(
    path_or_repo_id: str | Path, backbone: Backbone | None = None, revision: str | None = None
) -> TunedModel:
    """Rebuild a saved model: the backbone (built from the saved config unless given), the method, its state.

    ``path_or_repo_id`` is a folder written by ``save_pretrained`` (or by peft's, for LoRA: then
    ``backbone`` is required), a run folder (its ``adapter/``) or a Hugging Face Hub repo id (``owner/name``, downloaded and cached by
    ``huggingface_hub``). Loading onto a backbone other than the one it was trained on, or a state whose
    keys or shapes do not match, is an error, never a partial load.
    """
    directory = local_folder(path_or_repo_id, revision)
    if not has_config(directory) and (directory / RUN_CONFIG).is_file():  # a run folder: its adapter
        if not has_config(directory / RUN_ADAPTER):
            raise FileNotFoundError(
                f"{directory} is a run folder without {directory / RUN_ADAPTER}: the run has not finished "
                "(vprompt.load_run reads finished runs)"
            )
        directory = directory / RUN_ADAPTER
    if not has_config(directory) and is_peft_folder(directory):
        return load_peft(directory, backbone)
    config = read_config(directory)
    if backbone is None:
        backbone = rebuild_backbone(config["backbone"]["build_args"], Path(directory) / CONFIG_FILE)
    check_backbone_matches(config, backbone)
    model = attach(backbone, config["method"], **config["options"])
    model.load_trainable_state_dict(read_weights(directory))
    try:
        model.class_names = config.get("class_names")
    except ValueError as e:
        raise ValueError(
            f"{Path(directory) / CONFIG_FILE}: class_names: {e}; the adapter config is damaged"
        ) from None
    model.preprocessing = config.get("preprocessing")
    return model


def rebuild_backbone(build_args: dict[str, Any], where: Path) -> Backbone:
    """The backbone an adapter config's ``build_args`` describe (its other keys go to timm); a wrongly
    typed or unknown argument is one error naming the file, the key and what it expects."""
    from ..options import coerce

    hints = get_type_hints(create_backbone)
    try:
        args = {k: coerce(k, v, hints[k]) if k in hints else v for k, v in build_args.items()}
        return create_backbone(**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: backbone.build_args: {e}; the adapter config is damaged") from None


__all__ = [
    "METHODS",
    "HubUnavailableError",
    "SITE_METHODS",
    "Method",
    "MethodConfig",
    "MethodNotApplicable",
    "TunedModel",
    "attach",
    "load_adapter",
    "method_config",
]
