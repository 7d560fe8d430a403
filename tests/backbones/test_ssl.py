"""Self-supervised backbones: MoCo v3 checkpoints in the official key layouts load strictly into timm
ViTs (logits equal a timm model given the same weights), and MAE is pooled as the MAE/VPT code pools it."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vprompt
from numerics import assert_exact
from vprompt.backbones import WeightsUnavailableError, ssl

D, DEPTH, HEADS, PATCH, SIZE = 32, 2, 2, 8, 32  # a tiny ViT: 4×4 patches of 8 px
TINY = dict(embed_dim=D, depth=DEPTH, num_heads=HEADS, patch_size=PATCH)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def sincos_pos_embed(grid: int, dim: int) -> torch.Tensor:
    """MoCo v3's fixed position embedding: a zero row for the class token, then [sin w, cos w, sin h, cos h]."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))
    w, h = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    out_w, out_h = w.flatten()[:, None] * omega, h.flatten()[:, None] * omega
    table = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), table])[None]


def encoder_keys(classes: int = 0) -> dict[str, torch.Tensor]:
    """A random ViT encoder in MoCo v3's key names (timm 0.4.9's VisionTransformer), written out by hand."""
    grid = SIZE // PATCH
    state = {
        "cls_token": torch.randn(1, 1, D) * 1e-2,
        "pos_embed": sincos_pos_embed(grid, D),
        "patch_embed.proj.weight": torch.randn(D, 3, PATCH, PATCH) * 0.05,
        "patch_embed.proj.bias": torch.randn(D) * 0.1,
    }
    for i in range(DEPTH):
        for name, shape in [
            ("norm1.weight", (D,)),
            ("norm1.bias", (D,)),
            ("attn.qkv.weight", (3 * D, D)),
            ("attn.qkv.bias", (3 * D,)),
            ("attn.proj.weight", (D, D)),
            ("attn.proj.bias", (D,)),
            ("norm2.weight", (D,)),
            ("norm2.bias", (D,)),
            ("mlp.fc1.weight", (4 * D, D)),
            ("mlp.fc1.bias", (4 * D,)),
            ("mlp.fc2.weight", (D, 4 * D)),
            ("mlp.fc2.bias", (D,)),
        ]:
            value = torch.randn(shape) * 0.2
            state[f"blocks.{i}.{name}"] = value + 1 if name.endswith("norm1.weight") else value
    state["norm.weight"], state["norm.bias"] = 1 + torch.randn(D) * 0.1, torch.randn(D) * 0.1
    if classes:
        state["head.weight"], state["head.bias"] = torch.randn(classes, D) * 0.1, torch.randn(classes)
    return state


def mlp_keys(layers: int, hidden: int = 16, out: int = 8) -> dict[str, torch.Tensor]:
    """MoCo v3's projector / predictor: Linear (no bias), BatchNorm, ReLU ...; the last BN without affine."""
    state = {}
    for layer in range(layers):
        last = layer == layers - 1
        state[f"{3 * layer}.weight"] = torch.randn(out if last else hidden, D if layer == 0 else hidden)
        bn = f"{3 * layer + 1}."
        if not last:
            state[bn + "weight"], state[bn + "bias"] = torch.ones(hidden), torch.zeros(hidden)
        state[bn + "running_mean"], state[bn + "running_var"] = (
            torch.zeros(out if last else hidden),
            torch.ones(out if last else hidden),
        )
        state[bn + "num_batches_tracked"] = torch.tensor(7)
    return state


def pretraining_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """vit-b-300ep.pth.tar's layout: base and momentum encoders with projector heads, the predictor, and
    the optimiser and scaler states main_moco.py saves beside them."""
    state = {}
    for part in ("base_encoder", "momentum_encoder"):  # the momentum encoder differs: only base is used
        shift = 0.0 if part == "base_encoder" else 0.5
        state |= {f"module.{part}.{k}": v + shift for k, v in encoder.items()}
        state |= {f"module.{part}.head.{k}": v for k, v in mlp_keys(3).items()}
    state |= {f"module.predictor.{k}": v for k, v in mlp_keys(2, out=8).items()}
    optimizer = {"state": {0: {"mu": torch.zeros(3)}}, "param_groups": [{"lr": 1.5e-4, "params": [0]}]}
    return {
        "epoch": 300,
        "arch": "vit_base",
        "state_dict": state,
        "optimizer": optimizer,
        "scaler": {"scale": 1.0},
    }


def linear_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """linear-vit-b-300ep.pth.tar's layout: the encoder and its linear classifier under ``module.``."""
    return {
        "epoch": 90,
        "arch": "vit_base",
        "state_dict": {f"module.{k}": v for k, v in encoder.items()},
        "best_acc1": torch.tensor(76.7),
        "optimizer": {"state": {}, "param_groups": [{"lr": 3.0, "params": [0, 1]}]},
    }


def reference(encoder: dict[str, torch.Tensor], classes: int = 0) -> torch.nn.Module:
    """timm's ViT given the same weights directly: what the converted checkpoint must compute."""
    model = timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=SIZE, num_classes=classes, **TINY
    )
    model.load_state_dict(encoder, strict=True)
    return model.eval()


def save(tmp_path: Path, checkpoint: dict, name: str = "vit-b-300ep.pth.tar") -> Path:
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["pre-training", "linear", "deit"])
def test_mocov3_checkpoints_compute_what_timm_computes_with_their_weights(tmp_path, float64, kind):
    classes = 7 if kind == "linear" else 0
    encoder = encoder_keys(classes)
    checkpoint = {
        "pre-training": pretraining_checkpoint,
        "linear": linear_checkpoint,
        "deit": lambda e: {"model": dict(e)},  # moco-v3's convert_to_deit.py
    }[kind](encoder)
    path = save(tmp_path, checkpoint)
    bb = vprompt.backbone(f"mocov3:{path}", **TINY).eval()
    assert bb.source == f"MoCo v3 {kind} checkpoint {path}"
    assert bb.num_classes == classes and not bb.new_head
    assert bb.input_size == (3, SIZE, SIZE)  # the checkpoint's own grid
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert_exact(bb(x), reference(encoder, classes)(x), f"{kind} logits")
    assert torch.equal(bb.model.pos_embed, encoder["pos_embed"])  # the fixed sin-cos table, as saved


def test_mocov3_uses_its_own_normalisation_and_class_token_pooling(tmp_path):
    path = save(tmp_path, pretraining_checkpoint(encoder_keys()))
    bb = vprompt.backbone(f"mocov3:{path}", num_classes=5, **TINY)
    dc = bb.data_config
    assert (tuple(dc["mean"]), tuple(dc["std"])) == IMAGENET
    assert dc["interpolation"] == "bilinear" and dc["crop_pct"] == 224 / 256
    assert bb.model.global_pool == "token" and isinstance(bb.model.norm, torch.nn.LayerNorm)
    assert bb.cls_only_status() == "CLS row only"
    assert bb.num_classes == 5 and bb.new_head
    assert list(bb.sites) == ["input", "embed", "block.0", "block.1", "pre_logits"]
    assert bb.site("embed").shape == (1 + 16, D) and bb.site("embed").prefix_tokens == 1
    random = vprompt.backbone(
        f"mocov3:{path}", pretrained=False, **TINY
    )  # the file's architecture, no weights
    assert (
        random.source == "random init"
        and (tuple(random.data_config["mean"]), tuple(random.data_config["std"])) == IMAGENET
    )
    assert not torch.equal(random.model.blocks[0].attn.qkv.weight, bb.model.blocks[0].attn.qkv.weight)


def test_mocov3_token_methods_train_only_their_own_parameters(tmp_path):
    path = save(tmp_path, pretraining_checkpoint(encoder_keys()))
    model = vprompt.attach(vprompt.backbone(f"mocov3:{path}", num_classes=3, **TINY), "vpt-deep")
    frozen = {k: v.clone() for k, v in model.backbone.model.state_dict().items() if not k.startswith("head.")}
    model.train()
    loss = F.cross_entropy(model(torch.randn(2, 3, SIZE, SIZE)), torch.tensor([0, 2]))
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("prompts" in n or ".head." in n for n in grads), grads
    assert all(torch.equal(v, model.backbone.model.state_dict()[k]) for k, v in frozen.items())


def test_mocov3_rebuilds_from_its_recorded_arguments_in_any_directory(tmp_path, monkeypatch):
    path = save(tmp_path, pretraining_checkpoint(encoder_keys()))
    monkeypatch.chdir(tmp_path)
    bb = vprompt.backbone(f"mocov3:{path.name}", **TINY).eval()
    assert bb.build_args["name"] == bb.name == f"mocov3:{path}"
    monkeypatch.chdir(tmp_path.parent)
    again = vprompt.backbone(**bb.build_args).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(again(x), bb(x), rtol=0, atol=0)


def test_a_missing_or_extra_key_is_an_error_listing_it(tmp_path):
    encoder = encoder_keys()
    del encoder["blocks.1.mlp.fc2.bias"]
    encoder["blocks.0.attn.extra"] = torch.zeros(2)
    path = save(tmp_path, pretraining_checkpoint(encoder))
    with pytest.raises(ValueError) as caught:
        vprompt.backbone(f"mocov3:{path}", **TINY)
    message = str(caught.value)
    assert message.startswith(f"{path}: MoCo v3 weights do not fit the ViT:")
    assert (
        "missing (1): blocks.1.mlp.fc2.bias" in message and "unexpected (1): blocks.0.attn.extra" in message
    )


def test_a_wrong_shape_is_an_error_naming_both_shapes(tmp_path):
    encoder = encoder_keys()
    encoder["norm.weight"] = torch.ones(D + 1)
    path = save(tmp_path, {"model": encoder})
    with pytest.raises(ValueError, match=rf"wrong shape \(1\): norm.weight \({D + 1},\) vs \({D},\)"):
        vprompt.backbone(f"mocov3:{path}", **TINY)


def test_keys_outside_the_official_layout_are_refused(tmp_path):
    checkpoint = pretraining_checkpoint(encoder_keys())
    checkpoint["state_dict"]["module.queue"] = torch.zeros(3)  # neither encoder, projector nor predictor
    path = save(tmp_path, checkpoint)
    with pytest.raises(ValueError, match=r"1 key\(s\) outside the MoCo v3 pre-training layout: module.queue"):
        ssl.read_mocov3(path)
    linear = linear_checkpoint(encoder_keys(7))
    linear["state_dict"]["fc.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"outside the MoCo v3 linear layout: fc.weight"):
        ssl.read_mocov3(save(tmp_path, linear, "linear.pth.tar"))


def test_what_is_left_out_of_a_pretraining_checkpoint_is_exactly_projector_momentum_and_predictor(tmp_path):
    encoder = encoder_keys()
    checkpoint = pretraining_checkpoint(encoder)
    read = ssl.read_mocov3(save(tmp_path, checkpoint))
    assert read.kind == "pre-training" and read.arch == "vit_base_patch16_224"
    assert set(read.state_dict) == set(encoder)
    assert read.dropped == len(checkpoint["state_dict"]) - len(encoder)
    assert all(torch.equal(read.state_dict[k], v) for k, v in encoder.items())  # base, not momentum


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ([1, 2], r"is not a MoCo v3 checkpoint: no 'state_dict' or 'model' in it \(found list\)"),
        ({"epoch": 3}, r"no 'state_dict' or 'model' in it \(found \['epoch'\]\)"),
        ({"state_dict": {"module.x": 3}}, "not a mapping of names to tensors"),
        ({"arch": "vit_conv_base", "model": {}}, r"architecture 'vit_conv_base' is not supported"),
        ({"arch": "resnet50", "model": {}}, r"not the ResNet or conv-stem"),
    ],
)
def test_files_that_are_not_moco_v3_vit_checkpoints_are_clear_errors(tmp_path, checkpoint, message):
    with pytest.raises(ValueError, match=message):
        ssl.read_mocov3(save(tmp_path, checkpoint))


def test_mocov3_files_are_read_without_running_code(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "x": Path("/")}, path)  # unpickling a class needs weights_only=False
    with pytest.raises(ValueError, match="could not read MoCo v3 checkpoint .*evil.pth.tar"):
        ssl.read_mocov3(path)
    with pytest.raises(FileNotFoundError, match="MoCo v3 checkpoint not found: .*absent.pth.tar"):
        vprompt.backbone(f"mocov3:{tmp_path / 'absent.pth.tar'}")


def test_mocov3_names_its_file_so_weights_is_refused(tmp_path):
    path = save(tmp_path, {"model": encoder_keys()})
    with pytest.raises(ValueError, match="names its weights file already; leave out --weights"):
        vprompt.backbone(f"mocov3:{path}", weights=path, **TINY)


# ------------------------------------------------------------------------------------------------ MAE


def mae_expected(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """By hand: blocks, mean of the patch tokens (not the class token), LayerNorm with no affine (eps 1e-6)."""
    tokens = model.blocks(model._pos_embed(model.patch_embed(x)))
    return F.layer_norm(tokens[:, 1:].mean(1), (tokens.shape[-1],), eps=1e-6)


@pytest.mark.numerics
def test_mae_pools_the_patch_tokens_through_a_fresh_layer_norm(float64):
    bb = vprompt.backbone("mae:vit_base_patch16_224", pretrained=False, img_size=SIZE, **TINY).eval()
    model = bb.model
    assert model.global_pool == "avg" and isinstance(model.norm, torch.nn.Identity)
    assert isinstance(model.fc_norm, torch.nn.LayerNorm) and model.fc_norm.eps == 1e-6
    assert torch.equal(model.fc_norm.weight, torch.ones(D)) and torch.equal(
        model.fc_norm.bias, torch.zeros(D)
    )
    assert (tuple(bb.data_config["mean"]), tuple(bb.data_config["std"])) == IMAGENET
    assert bb.num_classes == 0 and bb.cls_only_status().startswith("all tokens")
    assert bb.site("pre_logits").shape == (D,)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert_exact(bb(x), mae_expected(model, x), "MAE pooled features")


@pytest.mark.numerics
def test_mae_from_the_official_file_drops_its_final_norm(tmp_path, float64):
    """``mae_pretrain_vit_base.pth`` holds ``{"model": encoder}`` with the pre-training encoder's final norm."""
    encoder = encoder_keys()
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": encoder}, path)
    bb = vprompt.backbone(
        "mae:vit_base_patch16_224", weights=path, num_classes=4, img_size=SIZE, **TINY
    ).eval()
    assert bb.source == str(path) and bb.num_classes == 4
    assert "norm.weight" not in bb.model.state_dict() and "fc_norm.weight" in bb.model.state_dict()
    reference_model = reference(encoder)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)
        assert_exact(features, mae_expected(reference_model, x), "MAE features from the official file")
        assert_exact(bb(x), bb.model.head(features), "MAE logits")


def test_mae_token_methods_attach_and_sites_cover_every_block():
    for method in ("vpt-deep", "vapt"):
        bb = vprompt.backbone(
            "mae:vit_base_patch16_224.mae", pretrained=False, num_classes=3, img_size=SIZE, **TINY
        )
        assert list(bb.sites) == ["input", "embed", "block.0", "block.1", "pre_logits"]
        model = vprompt.attach(bb, method)
        assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 3)


def test_mae_names_only_vits_with_mae_weights():
    with pytest.raises(
        ValueError, match=r"mae:resnet50: no timm ViT with MAE weights .*vit_base_patch16_224.mae"
    ):
        vprompt.backbone("mae:resnet50", pretrained=False)


def test_mae_hub_weights_offline_are_one_line(monkeypatch):
    """HF_HUB_OFFLINE=1 (as in every test) and no cached copy: one line naming the backbone as given."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-vprompt-cache")
    with pytest.raises(WeightsUnavailableError) as caught:
        vprompt.backbone("mae:vit_base_patch16_224", img_size=SIZE, **TINY)
    message = str(caught.value)
    assert "\n" not in message and "'vit_base_patch16_224.mae'" in message
    assert "vprompt.backbone('mae:vit_base_patch16_224', weights=FILE)" in message
