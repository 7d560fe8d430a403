"""The frozen-prefix cache changes speed, never results; it is refused where it would change them."""

from __future__ import annotations

import pytest
from tiny_runs import TINY, same_weights, weights

import vprompt
from vprompt.engine.cache import CacheRefused
from vprompt.methods.ap import ActivationPrompt

CASES = [  # (method, options, extra run options, the site the cache holds)
    ("ap", {"site": "block.8"}, {}, "block.8"),
    ("ap", {"site": "stage.2", "shape": "channel"}, {"backbone": "resnet18"}, "stage.2"),
    ("aap", {"site": "block.8"}, {}, "block.8"),  # the generator's dropout still runs every step
    ("aap", {"site": "stage.2", "shape": "spatial"}, {"backbone": "resnet18"}, "stage.2"),
    ("linear", {}, {}, "pre_logits"),
    ("vpt-deep", {"num_prompts": 2}, {}, "embed"),  # prompt dropout still runs every step
    ("lora", {"r": 2}, {}, "input"),  # the preprocessed images
    ("vp-pad", {"mapping": "ilm", "width": 4}, {}, "input"),  # refitted each epoch from the cache
]


@pytest.mark.parametrize("method,options,extra,site", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_cached_and_uncached_training_agree(tmp_path, method, options, extra, site):
    run = dict(TINY, method=method, method_options=options, epochs=3, **extra)
    cached = vprompt.train(**run, cache="auto", output=tmp_path / "cached")
    plain = vprompt.train(**run, cache="off", output=tmp_path / "plain")
    assert cached["cache"]["site"] == site and cached["cache"]["storage"] == "memory"
    assert plain["cache"]["site"] is None
    same_weights(weights(tmp_path / "cached"), weights(tmp_path / "plain"), atol=2e-5)
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
