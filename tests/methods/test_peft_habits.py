"""peft's habits: merge_and_unload, peft's own adapter format both ways, from_pretrained, the Hub."""

from __future__ import annotations

import copy
import json
import shutil

import peft
import pytest
import torch
from packaging.version import Version
from peft.tuners.tuners_utils import BaseTunerLayer

import vprompt
from numerics import assert_exact
from vprompt import MethodNotApplicable, TunedModel
from vprompt.model import HubUnavailableError

TINY = dict(img_size=32, patch_size=4, depth=2, embed_dim=24, num_heads=2)


def vit() -> vprompt.Backbone:
    return vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY)


def resnet() -> vprompt.Backbone:
    return vprompt.backbone("resnet18", pretrained=False, num_classes=5, img_size=32, zero_init_last=False)


def trained(model: TunedModel) -> TunedModel:
    """Random values in every trained tensor, so that nothing is zero the way it starts."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("factory", [vit, resnet], ids=["vit-qkv", "resnet-conv"])
def test_merge_and_unload_folds_lora_into_the_weights(factory):
    bb = factory().eval()
    bare_params = sum(p.numel() for p in bb.parameters())
    x = torch.randn(2, *bb.input_size)
    model = trained(vprompt.attach(bb, "lora", r=4))
    with torch.no_grad():
        before = model(x)
        for layer in model.method._layers:  # the same model without the LoRA updates
            layer.enable_adapters(False)
        unadapted = model(x)
        for layer in model.method._layers:
            layer.enable_adapters(True)
    merged = model.merge_and_unload()
    assert merged is bb
    assert not any(isinstance(m, BaseTunerLayer) for m in bb.modules())
    assert "peft_config" not in vars(bb.model)
    assert sum(p.numel() for p in bb.parameters()) == bare_params
    with torch.no_grad():
        after = bb(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert (after - unadapted).abs().max() > 1e-2  # the update is really in the weights


def test_merge_and_unload_of_other_methods():
    bb = vit().eval()
    model = trained(vprompt.attach(bb, "norm"))
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        before = model(x)
        torch.testing.assert_close(model.merge_and_unload()(x), before, rtol=0, atol=0)
    model = vprompt.attach(vit(), "vpt-deep", num_prompts=2)
    with pytest.raises(MethodNotApplicable, match="cannot be folded into the backbone's weights"):
        model.merge_and_unload()


@pytest.mark.numerics
def test_lora_saves_in_peft_format_that_peft_loads(tmp_path, float64):
    bb = vit().eval()
    timm_model = copy.deepcopy(bb.model)  # the same timm model, without vprompt
    model = trained(vprompt.attach(bb, "lora", r=4, alpha=8))
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "vprompt_config.json",
        "vprompt_model.safetensors",
    ]
    config = peft.PeftConfig.from_pretrained(str(tmp_path))
    assert (config.peft_type, config.r, config.lora_alpha) == ("LORA", 4, 8)
    assert sorted(config.target_modules) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert config.modules_to_save == ["head"]
    peft_model = peft.PeftModel.from_pretrained(timm_model, str(tmp_path)).eval()
    x = torch.randn(3, *bb.input_size)
    with torch.no_grad():
        assert_exact(peft_model(x), model(x))
    # and vprompt reads its own folder back, rebuilding the backbone from the saved config
    again = TunedModel.from_pretrained(tmp_path, backbone=vit().eval())
    for key, value in model.trainable_state_dict().items():
        torch.testing.assert_close(again.trainable_state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("factory", [vit, resnet], ids=["vit-qkv", "resnet-conv"])
def test_peft_from_pretrained_takes_the_backbone_as_well_as_its_timm_model(tmp_path, factory):
    bb = factory().eval()
    on_backbone, on_timm = copy.deepcopy(bb), copy.deepcopy(bb.model)
    spares = [copy.deepcopy(bb) for _ in "ab"]
    model = trained(vprompt.attach(bb, "lora", r=4))
    model.save_pretrained(tmp_path / "vprompt")
    x = torch.randn(2, *bb.input_size)
    peft_timm = peft.PeftModel.from_pretrained(on_timm, str(tmp_path / "vprompt")).eval()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(peft_timm(x), expected)  # the timm model: every peft from 0.14
    if Version(peft.__version__) < Version("0.21"):
        return  # on the Backbone itself peft 0.14.0 gives other logits (make test-lower); docs/python.md
    peft_bb = peft.PeftModel.from_pretrained(on_backbone, str(tmp_path / "vprompt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_bb(x), expected)
    # what peft saves from the Backbone loads back into peft, and into vprompt
    peft_bb.save_pretrained(str(tmp_path / "peft"), save_embedding_layers=False)
    again = peft.PeftModel.from_pretrained(spares[0], str(tmp_path / "peft")).eval()
    ours = vprompt.load_adapter(tmp_path / "peft", spares[1]).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected)
        torch.testing.assert_close(ours(x), expected)


@pytest.mark.numerics
def test_a_peft_saved_lora_loads_into_vprompt(tmp_path, float64):
    bb = vit().eval()
    timm_model = copy.deepcopy(bb.model)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["qkv"], modules_to_save=["head"])
    peft_model = peft.get_peft_model(timm_model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.normal_(0, 0.2)
    peft_model.eval().save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="pass the backbone it was trained on"):
        vprompt.load_adapter(tmp_path)
    model = vprompt.load_adapter(tmp_path, bb).eval()
    assert model.method.name == "lora" and model.method.config.r == 4 and model.method.config.alpha == 16
    assert model.method.target_names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    x = torch.randn(3, *bb.input_size)
    with torch.no_grad():
        assert_exact(model(x), peft_model(x))


def test_a_peft_lora_without_the_head_is_refused(tmp_path):
    peft_model = peft.get_peft_model(copy.deepcopy(vit().model), peft.LoraConfig(r=2, target_modules=["qkv"]))
    peft_model.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="the classifier head 'head' is not saved"):
        vprompt.load_adapter(tmp_path, vit())


def test_other_methods_write_only_vprompt_files(tmp_path):
    bb = vit().eval()
    model = trained(vprompt.attach(bb, "ap", site="block.0", shape="channel"))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vprompt_config.json", "vprompt_model.safetensors"]
    with pytest.raises(ValueError):
        peft.PeftConfig.from_pretrained(str(tmp_path))
    again = TunedModel.from_pretrained(tmp_path)  # backbone rebuilt from the saved config (random init here)
    torch.testing.assert_close(again.method.prompt, model.method.prompt, rtol=0, atol=0)
    x = torch.randn(2, *bb.input_size)
    with torch.no_grad():
        expected = model(x)
        model.unload()
        torch.testing.assert_close(
            TunedModel.from_pretrained(tmp_path, bb).eval()(x), expected, rtol=0, atol=0
        )


def test_the_method_says_whether_peft_files_are_written(tmp_path, monkeypatch):
    """save_pretrained asks the method (its ``peft_type``), never its name."""
    from vprompt.methods.lora import LoRA

    model = trained(vprompt.attach(vit(), "lora", r=2))
    model.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    monkeypatch.setattr(LoRA, "peft_type", None)
    model.save_pretrained(tmp_path / "own")
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == [
        "vprompt_config.json",
        "vprompt_model.safetensors",
    ]


def test_unload_is_peft_name_and_detach_its_deprecated_alias():
    bb = vit()
    flags = {n: p.requires_grad for n, p in bb.named_parameters()}
    assert vprompt.attach(bb, "lora", r=2).unload() is bb
    assert not any(isinstance(m, BaseTunerLayer) for m in bb.model.modules())
    with pytest.warns(DeprecationWarning, match=r"unload\(\)"):
        assert vprompt.attach(bb, "ap", site="block.0").detach() is bb
    assert {n: p.requires_grad for n, p in bb.named_parameters()} == flags
    assert not bb.site("block.0").module._forward_hooks


def test_folders_with_the_old_file_names_still_load(tmp_path):
    model = trained(vprompt.attach(vit(), "ap", site="embed", shape="channel"))
    model.save_pretrained(tmp_path)
    (tmp_path / "vprompt_model.safetensors").rename(tmp_path / "adapter.safetensors")
    (tmp_path / "vprompt_config.json").rename(tmp_path / "adapter_config.json")
    again = vprompt.load_adapter(tmp_path)
    torch.testing.assert_close(again.method.prompt, model.method.prompt, rtol=0, atol=0)


def test_hub_ids_offline_are_one_clear_error():
    with pytest.raises(
        HubUnavailableError, match=r"'nobody/no-such-adapter' is not a local folder.*HF_HUB_OFFLINE"
    ):
        TunedModel.from_pretrained("nobody/no-such-adapter")
    with pytest.raises(FileNotFoundError, match="not a Hugging Face Hub repo id"):
        vprompt.load_adapter("no/such/folder")
    model = vprompt.attach(vit(), "linear")
    with pytest.raises(HubUnavailableError, match=r"cannot push to 'me/tiny'.*HF_HUB_OFFLINE"):
        model.push_to_hub("me/tiny")


def test_push_to_hub_then_from_pretrained_by_repo_id(tmp_path, monkeypatch):
    """The Hub stood in for by a local folder: what is pushed is what a repo id loads."""
    import huggingface_hub

    hub = tmp_path / "hub"
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs["private"]))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
            calls.append(("upload", repo_id, commit_message))
            shutil.copytree(folder_path, hub / repo_id)

    def snapshot_download(repo_id, revision=None):
        calls.append(("download", repo_id, revision))
        return str(hub / repo_id)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    bb = vit().eval()
    model = trained(vprompt.attach(bb, "lora", r=2))
    assert model.push_to_hub("me/tiny-lora", private=True, token="t") == "https://huggingface.co/me/tiny-lora"
    assert json.loads((hub / "me/tiny-lora/adapter_config.json").read_text())["peft_type"] == "LORA"
    again = TunedModel.from_pretrained("me/tiny-lora", revision="main")
    assert calls == [
        ("token", "t"),
        ("create", "me/tiny-lora", True),
        ("upload", "me/tiny-lora", "Upload vprompt adapter"),
        ("download", "me/tiny-lora", "main"),
    ]
    saved, loaded = model.trainable_state_dict(), again.trainable_state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0)
