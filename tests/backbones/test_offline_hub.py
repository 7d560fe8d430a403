"""Offline, hub weights fail within seconds with one complete line: the network is probed once (a short
connection, monkeypatched here: no test waits on a real timeout) before timm or torchvision would retry
for a minute, and messages are never cut mid-word."""

from __future__ import annotations

import socket

import pytest
import torch
from huggingface_hub import constants

import vprompt
from vprompt.backbones import WeightsUnavailableError, loading
from vprompt.cli import main


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE, empty caches, a probe that says "unreachable", and any real connection an error."""
    probes = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    monkeypatch.setattr(loading, "reachable", lambda host, *a, **k: probes.append(host) or False)

    def connect(*args, **kwargs):
        raise AssertionError(f"the network was touched: {args}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return probes


def test_timm_hub_weights_offline_are_one_complete_line_after_one_probe(no_network):
    with pytest.raises(WeightsUnavailableError) as caught:
        vprompt.backbone("vit_tiny_patch16_224", img_size=32)
    message = str(caught.value)
    assert no_network == ["huggingface.co"]
    assert "\n" not in message
    assert message.startswith(
        "could not get the pretrained weights of timm model 'vit_tiny_patch16_224': huggingface.co cannot be "
        "reached (offline?), and they are not in the local cache. Pass a local file with --weights FILE "
        "(.safetensors, .pth or .npz;"
    )
    assert "use an offline backbone (offline:efficientnet_lite0" in message
    assert message.endswith("or pretrained=False for random weights")
    assert constants.HF_HUB_OFFLINE is False  # the switch is put back


def test_mae_hub_weights_offline_are_one_line_after_one_probe(no_network):
    with pytest.raises(WeightsUnavailableError) as caught:
        vprompt.backbone("mae:vit_base_patch16_224", img_size=32, depth=1, embed_dim=16, num_heads=2)
    message = str(caught.value)
    assert no_network == ["huggingface.co"] and "\n" not in message
    assert message.startswith(
        "could not get the pretrained weights of timm model 'vit_base_patch16_224.mae': huggingface.co cannot "
        "be reached (offline?), and they are not in the local cache."
    )
    assert "vprompt.backbone('mae:vit_base_patch16_224', weights=FILE)" in message


def test_torchvision_weights_offline_are_refused_after_one_probe(no_network):
    with pytest.raises(
        WeightsUnavailableError, match="download.pytorch.org cannot be reached .* --weights FILE"
    ):
        vprompt.backbone("torchvision:resnet18")
    assert no_network == ["download.pytorch.org"]


def test_the_cli_prints_the_whole_line(no_network, capsys):
    assert main(["sites", "vit_tiny_patch16_224"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "vprompt sites: error: could not get the pretrained weights"
    )
    assert err.endswith("or pretrained=False for random weights\n") and "--weights FILE" in err


def test_hf_hub_offline_reads_the_cache_without_probing(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "reachable", lambda *a, **k: pytest.fail("probed although HF_HUB_OFFLINE"))
    with pytest.raises(
        WeightsUnavailableError, match="': HF_HUB_OFFLINE is set, and they are not in the local"
    ):
        vprompt.backbone("vit_tiny_patch16_224", img_size=32)


def test_the_probe_itself_says_unreachable_for_a_closed_port():
    with socket.socket() as s:  # a port that was free a moment ago: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert loading.reachable("127.0.0.1", port) is False


def test_long_errors_are_shortened_between_words_only():
    text = "We couldn't connect to the server to load this file, please try again " * 20
    short = loading.shorten(text, 100)
    assert short.endswith(" ...") and len(short) <= 104
    assert text.startswith(short[:-4]) and text[len(short) - 4] == " "  # cut at a space, not mid-word
    url = "https://example.org/" + "x" * 500 + " failed"
    assert loading.shorten(url, 100) == "https://example.org/" + "x" * 500 + " ..."
    assert loading.shorten("try again", 100) == "try again"
