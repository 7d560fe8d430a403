"""NaN or inf in a file vprompt loads (adapter weights, adapter configs, backbone weights) is refused on
load, naming the file and the tensor or key: it would otherwise give NaN logits silently."""

from __future__ import annotations

import json
import math

import numpy as np
import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

import vprompt

TINY = dict(img_size=32, patch_size=8, depth=1, embed_dim=24, num_heads=2)


def vit() -> vprompt.Backbone:
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=3, **TINY)


def test_nan_in_an_adapters_weights_is_refused_naming_file_and_tensor(tmp_path):
    vprompt.attach(vit(), "ap", site="block.0").save_pretrained(tmp_path)
    path = tmp_path / "vprompt_model.safetensors"
    state = load_file(path)
    assert vprompt.load_adapter(tmp_path) is not None  # finite: loads
    state["method.prompt"][0, 0] = math.nan
    save_file(state, path)
    with pytest.raises(ValueError, match=f"^{path}: non-finite values \\(NaN or inf\\) in method.prompt; "):
        vprompt.load_adapter(tmp_path)


def test_nan_in_an_adapters_options_is_refused_naming_file_and_key(tmp_path):
    vprompt.attach(vit(), "adapter", r=2).save_pretrained(tmp_path)
    path = tmp_path / "vprompt_config.json"
    config = json.loads(path.read_text())
    config["options"]["scale"] = math.nan
    path.write_text(json.dumps(config))  # Python writes the bare NaN that JSON readers accept
    with pytest.raises(ValueError, match=f"^{path}: non-finite values \\(NaN or inf\\) in options.scale; "):
        vprompt.load_adapter(tmp_path)


@pytest.mark.parametrize("key", ["lora_alpha", "lora_dropout"])
def test_a_peft_config_with_nan_is_refused_naming_the_key(tmp_path, key):
    bb = vit()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["qkv"], modules_to_save=["head"])
    peft.get_peft_model(bb.model, config).save_pretrained(str(tmp_path))
    path = tmp_path / "adapter_config.json"
    data = json.loads(path.read_text())
    data[key] = math.nan
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"^{path}: non-finite values \\(NaN or inf\\) in {key}; "):
        vprompt.load_adapter(tmp_path, vit())


def test_inf_in_peft_weights_is_refused_naming_the_tensor(tmp_path):
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["qkv"], modules_to_save=["head"])
    peft.get_peft_model(vit().model, config).save_pretrained(str(tmp_path))
    path = tmp_path / "adapter_model.safetensors"
    state = load_file(path)
    key = next(k for k in state if "lora_B" in k)
    state[key][0, 0] = -math.inf
    save_file(state, path)
    with pytest.raises(ValueError, match=f"^{path}: non-finite values \\(NaN or inf\\) in {key}; "):
        vprompt.load_adapter(tmp_path, vit())


@pytest.mark.parametrize(
    ("name", "options", "suffix"),
    [
        ("vit_tiny_patch16_224", TINY, ".safetensors"),
        ("vit_tiny_patch16_224", TINY, ".pth"),
        ("resnet18", {"img_size": 32}, ".npz"),  # a CNN's .npz is read as a flat state dict
    ],
)
def test_nan_in_backbone_weights_is_refused_naming_file_and_tensor(tmp_path, name, options, suffix):
    state = {
        k: v.clone() for k, v in vprompt.backbone(name, pretrained=False, **options).state_dict().items()
    }
    key = next(k for k, v in state.items() if v.is_floating_point() and k.endswith("weight"))
    state[key].view(-1)[0] = math.nan
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    elif suffix == ".pth":
        torch.save(state, path)
    else:
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    with pytest.raises(ValueError, match=f"^{path}: non-finite values .* in {key}; "):
        vprompt.backbone(name, weights=path, **options)
