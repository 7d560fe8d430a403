"""Backbones load from local files exactly, adapt heads and input sizes, and fail with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vprompt
from vprompt.backbones import WeightsUnavailableError

VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=24, num_heads=2)


def tiny_vit(**overrides) -> vprompt.Backbone:
    kwargs = {**VIT, **overrides}
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, **kwargs)


@pytest.fixture
def vit_file(tmp_path):
    torch.manual_seed(1)
    bb = tiny_vit(num_classes=5).eval()
    path = tmp_path / "vit.safetensors"
    save_file(bb.model.state_dict(), str(path))
    return bb, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".npz"])
def test_local_weights_reproduce_the_saved_model(tmp_path, suffix):
    torch.manual_seed(1)
    source = vprompt.backbone("resnet18", pretrained=False, num_classes=7, img_size=32).eval()
    state = source.model.state_dict()
    path = tmp_path / f"resnet{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    elif suffix == ".pth":
        torch.save({"state_dict": state}, path)  # nested, as training scripts write it
    else:
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    loaded = vprompt.backbone("resnet18", weights=path, img_size=32).eval()
    assert loaded.num_classes == 7 and loaded.source == str(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_new_head_keeps_every_backbone_weight(vit_file):
    source, path = vit_file
    loaded = tiny_vit(weights=path, num_classes=3)
    assert loaded.num_classes == 3
    src, new = source.model.state_dict(), loaded.model.state_dict()
    for key, value in src.items():
        if key.startswith("head."):
            assert new[key].shape[0] == 3
        else:
            assert torch.equal(new[key], value), key


def test_img_size_change_resamples_position_embeddings(vit_file):
    _, path = vit_file
    bigger = tiny_vit(weights=path, img_size=48, num_classes=0)
    assert bigger.input_size == (3, 48, 48)
    assert bigger.model.pos_embed.shape == (1, 1 + 6 * 6, 24)
    assert bigger.site("block.0").shape == (37, 24) and bigger.site("block.0").grid == (6, 6)


def test_torchvision_local_weights_and_head(tmp_path):
    torch.manual_seed(2)
    source = vprompt.backbone("torchvision:mobilenet_v2", pretrained=False, img_size=32).eval()
    path = tmp_path / "mnv2.pth"
    torch.save(source.model.state_dict(), path)
    same = vprompt.backbone("torchvision:mobilenet_v2", weights=path, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(same(x), source(x), rtol=0, atol=0)
    new_head = vprompt.backbone("torchvision:mobilenet_v2", weights=path, num_classes=4, img_size=32)
    assert new_head.num_classes == 4 and new_head.head_name == "classifier.1"


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        vprompt.backbone("resnet18", weights=missing)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".npz"])
def test_corrupt_weights_file_is_a_clear_error(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(WeightsUnavailableError, match=f"could not read weights file .*broken{suffix}"):
        vprompt.backbone("resnet18", weights=path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(vprompt.backbone("resnet18", pretrained=False).model.state_dict(), str(path))
    with pytest.raises(WeightsUnavailableError, match="do not fit timm architecture 'resnet34'"):
        vprompt.backbone("resnet34", weights=path)
    with pytest.raises(WeightsUnavailableError, match="do not fit torchvision architecture 'mobilenet_v2'"):
        vprompt.backbone("torchvision:mobilenet_v2", weights=path)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ValueError, match="Did you mean: .*resnet18"):
        vprompt.backbone("resnet_18")
    with pytest.raises(ValueError, match="offline:efficientnet_lite0"):
        vprompt.backbone("offline:efficientnet")
    with pytest.raises(ValueError, match="torchvision:resnet18"):
        vprompt.backbone("torchvision:resnet181")
    with pytest.raises(ValueError, match="unknown backbone library"):
        vprompt.backbone("keras:resnet18")


def test_hub_weights_offline_say_how_to_pass_a_local_file():
    with pytest.raises(WeightsUnavailableError, match="Pass a local file with --weights FILE"):
        vprompt.backbone("resnet18")  # HF_HUB_OFFLINE=1 in tests: no network is touched
