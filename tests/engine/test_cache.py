"""The frozen-prefix cache changes speed, never results; it is refused where it would change them."""

from __future__ import annotations

import contextlib

import pytest
import torch

import vprompt
from numerics import assert_trained_weights_close
from tiny_runs import TINY, same_weights, weights
from vprompt.data import load
from vprompt.engine.cache import CacheRefused, build_cache, cache_device
from vprompt.engine.distributed import Context
from vprompt.methods.ap import ActivationPrompt

CASES = [  # (method, options, extra run options, the site the cache holds)
    ("ap", {"site": "block.8"}, {}, "block.8"),
    ("ap", {"site": "stage.2", "shape": "channel"}, {"backbone": "resnet18"}, "stage.2"),
    ("aap", {"site": "block.8"}, {}, "block.8"),  # the generator's dropout still runs every step
    ("aap", {"site": "stage.2", "shape": "spatial"}, {"backbone": "resnet18"}, "stage.2"),
    ("linear", {}, {}, "pre_logits"),
    ("vpt-deep", {"num_prompts": 2}, {}, "embed"),  # prompt dropout still runs every step
    ("gatevpt", {"num_prompts": 2}, {}, "embed"),  # gates and temperatures act inside the blocks
    ("e2vpt", {"num_prompts": 2, "kv_prompts": 2}, {}, "embed"),  # key-value prompts inside the blocks
    ("lora", {"r": 2}, {}, "input"),  # the preprocessed images
    ("vp-pad", {"mapping": "ilm", "width": 4}, {}, "input"),  # refitted each epoch from the cache
    ("ssf", {}, {}, "input"),  # γ, β from the patch projection on: the preprocessed images
]


@pytest.mark.parametrize("method,options,extra,site", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
@pytest.mark.numerics
def test_cached_and_uncached_training_agree(tmp_path, method, options, extra, site):
    run = dict(TINY, method=method, method_options=options, epochs=3, **extra)
    cached = vprompt.train(**run, cache="auto", output=tmp_path / "cached")
    plain = vprompt.train(**run, cache="off", output=tmp_path / "plain")
    assert cached["cache"]["site"] == site and cached["cache"]["storage"] == "memory"
    assert plain["cache"]["site"] is None
    assert_trained_weights_close(weights(tmp_path / "cached"), weights(tmp_path / "plain"))
    assert cached["val_accuracy"] == pytest.approx(plain["val_accuracy"])


def test_disk_cache_in_half_precision(tmp_path):
    run = dict(TINY, method="ap", method_options={"site": "block.6"})
    half = vprompt.train(**run, cache="disk", cache_dtype="float16", output=tmp_path / "half")
    vprompt.train(**run, cache="off", output=tmp_path / "full")
    assert half["cache"]["storage"] == "disk" and half["cache"]["dtype"] == "float16"
    assert half["cache"]["mib"] == pytest.approx((64 + 16) * 5 * 192 * 2 / 2**20)  # train + val, fp16
    same_weights(weights(tmp_path / "half"), weights(tmp_path / "full"), atol=1e-2)
    assert not list(tmp_path.glob("half/vprompt-cache-*"))  # the mapped file is gone from the run dir


def test_random_augmentation_refuses_an_explicit_cache(tmp_path):
    run = dict(TINY, method="ap", method_options={"site": "block.6"}, protocol="fgvc", epochs=1)
    with pytest.raises(CacheRefused, match="protocol 'fgvc' augments training images randomly"):
        vprompt.train(**run, cache="memory", output=tmp_path / "a")
    summary = vprompt.train(**run, cache="auto", output=tmp_path / "b")
    assert summary["cache"]["site"] is None and "augments" in summary["cache"]["why"]


def test_a_method_that_misstates_its_first_site_gets_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(ActivationPrompt, "first_site", lambda self, backbone: "block.9")  # prompt at 3
    summary = vprompt.train(
        **dict(TINY, method="ap", method_options={"site": "block.3"}, epochs=1), output=tmp_path / "r"
    )
    assert summary["cache"]["site"] is None
    assert "something trained acts before site 'block.9'" in summary["cache"]["why"]


def test_an_in_memory_cache_stays_on_the_gpu_when_it_fits():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert cache_device("memory", 500, gpu, free_bytes=1000) == gpu  # up to half the free memory
    assert cache_device("memory", 501, gpu, free_bytes=1000) == cpu
    assert cache_device("disk", 10, gpu, free_bytes=1000) == cpu  # a memory map lives on the host
    assert cache_device("memory", 10, cpu) == cpu


def test_the_cache_is_computed_under_the_run_autocast():
    """The cached activations are the ones the uncached run computes: under the same mixed precision."""
    bb = vprompt.backbone("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32)
    model = vprompt.attach(bb, "ap", site="block.8")
    data = load("synthetic:4x32", None, "train", bb.data_config, protocol="vp")  # 64 images
    entered = []

    @contextlib.contextmanager
    def autocast():
        entered.append(torch.is_grad_enabled())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield

    cache = build_cache(model, "block.8", data, Context(), 16, "float32", "memory", autocast=autocast)
    assert entered == [False] * 4  # once per batch of 16, without gradients
    assert cache.device == torch.device("cpu") and cache.features.shape == (64, 5, 192)
    x, _ = data[3]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = bb.site("block.8").capture(bb.model, x[None])
    torch.testing.assert_close(cache.features[3:4], expected.float(), rtol=0, atol=0)
    features, labels = cache.batch([3, 0], torch.device("cpu"))
    assert torch.equal(features[0], cache.features[3]) and labels.tolist() == [data[3][1], data[0][1]]
