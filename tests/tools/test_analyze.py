"""Layer analysis (``vprompt.tools.analyze``): linear CKA, attention distance and effective receptive field
against values worked out by hand, on tiny models; ``vprompt analyze layers`` on the packaged data."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from timm.models.vision_transformer import Attention
from torch import nn

import vprompt
from numerics import assert_exact
from tiny_runs import TINY
from vprompt.backbones.sites import Site, SitePoint
from vprompt.cli import main
from vprompt.tools import analyze


@pytest.fixture(autouse=True, scope="module")
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_vit(**kwargs):
    """A 2-block ViT-Tiny at 32 px with 8-px patches: a 4×4 grid behind one CLS token."""
    return vprompt.backbone(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, init_seed=0, **kwargs
    )


def by_site(result):
    return {r["site"]: r for r in result["rows"]}


# ---------------------------------------------------------------------------------------------- CKA
def feature_space_cka(x, y):
    """Kornblith et al.'s feature-space form: ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖) on column-centred features."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


@pytest.mark.numerics
def test_cka_is_one_for_identical_features_and_invariant_to_scaling_and_rotation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, dtype=torch.float64, generator=g)
    y = torch.randn(50, 5, dtype=torch.float64, generator=g) + x[:, :5]
    q, _ = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64, generator=g))
    assert analyze.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    base = analyze.linear_cka(x, y)
    assert base == pytest.approx(feature_space_cka(x, y), abs=1e-12)
    n = 50
    h = torch.eye(n, dtype=torch.float64) - 1 / n  # the centring matrix, explicitly
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h  # noqa: E741
    assert base == pytest.approx(float((k * l).sum() / (k.norm() * l.norm())), abs=1e-12)
    assert analyze.linear_cka(3.7 * x, y) == pytest.approx(base, abs=1e-12)
    assert analyze.linear_cka(x @ q, y) == pytest.approx(base, abs=1e-12)
    assert analyze.linear_cka(x + 5.0, y) == pytest.approx(base, abs=1e-12)  # a shift is centred away
    assert analyze.linear_cka(x @ q, x) == pytest.approx(1.0, abs=1e-12)
    stretched = x.clone()
    stretched[:, 0] *= 10  # not isotropic: CKA changes
    assert abs(analyze.linear_cka(stretched, y) - base) > 1e-3
    assert 0 < base < 1


def test_cka_of_independent_noise_is_near_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 3, dtype=torch.float64, generator=g)
    y = torch.randn(4000, 3, dtype=torch.float64, generator=g)
    assert analyze.linear_cka(x, y) < 0.01  # its expectation is about sqrt(3·3)/4000
    assert math.isnan(analyze.linear_cka(torch.ones(5, 2), x[:5]))  # a constant representation
    with pytest.raises(ValueError, match="same images"):
        analyze.cka(analyze.centered_gram(x[:5]), analyze.centered_gram(y[:6]))


def test_pooling_flattens_or_averages_per_image():
    tokens = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    assert analyze.pooled(tokens, "tokens", "flatten").shape == (2, 12)
    assert torch.equal(analyze.pooled(tokens, "tokens", "mean"), tokens.mean(1))
    nchw = torch.randn(2, 4, 3, 3)
    assert torch.equal(analyze.pooled(nchw, "nchw", "mean"), nchw.mean((2, 3)))
    assert torch.equal(analyze.pooled(nchw.permute(0, 2, 3, 1), "nhwc", "mean"), nchw.mean((2, 3)))
    with pytest.raises(ValueError, match="pool must be one of"):
        analyze.pooled(nchw, "nchw", "max")


# ---------------------------------------------------------------------------------- attention distance
def mean_pairwise_distance(rows, cols, patch_h, patch_w):
    """Mean distance (pixels) between patch centres over all ordered pairs of a rows × cols grid."""
    cells = list(itertools.product(range(rows), range(cols)))
    pairs = list(itertools.product(cells, cells))
    return sum(math.hypot((a[0] - b[0]) * patch_h, (a[1] - b[1]) * patch_w) for a, b in pairs) / len(pairs)


def test_attention_distance_of_uniform_and_self_attention():
    grid, patch, prefix = (3, 4), (8.0, 6.0), 1
    n = prefix + grid[0] * grid[1]
    meter = analyze.AttentionDistance(grid, patch)
    meter.add(torch.full((2, 3, n, n), 1 / n, dtype=torch.float64))  # uniform over every token, CLS included
    got = meter.result()
    want = mean_pairwise_distance(*grid, *patch)
    assert got["distance"] == pytest.approx([want] * 3, rel=1e-12)
    assert got["distance_raw"] == pytest.approx([want * (n - 1) / n] * 3, rel=1e-12)
    assert got["prefix_mass"] == pytest.approx([1 / n] * 3, rel=1e-12)
    self_only = analyze.AttentionDistance(grid, patch)
    self_only.add(torch.eye(n).expand(1, 2, n, n))
    assert self_only.result()["distance"] == [0.0, 0.0]
    # a query attending one patch 2 rows and 1 column away: distance sqrt(16² + 6²) for that query
    one = analyze.AttentionDistance((3, 3), (8.0, 6.0))
    w = torch.zeros(1, 1, 9, 9)
    w[0, 0, :, :] = torch.eye(9)
    w[0, 0, 0, 0], w[0, 0, 0, 7] = 0.0, 1.0  # query (0, 0) → key (2, 1)
    one.add(w)
    assert one.result()["distance"] == pytest.approx([math.hypot(16, 6) / 9], rel=1e-12)


@pytest.mark.numerics
def test_recomputed_attention_weights_give_the_module_output(float64):
    attn = Attention(16, num_heads=4, qkv_bias=True, qk_norm=True, norm_layer=nn.LayerNorm).eval()
    for p in attn.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        w = analyze.attention_weights(attn, x)
        v = attn.qkv(x).reshape(2, 7, 3, 4, 4).permute(2, 0, 3, 1, 4)[2]
        out = attn.proj(attn.norm((w @ v).transpose(1, 2).reshape(2, 7, 16)))
        assert_exact(out, attn(x), "attention from the recomputed weights")
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 7))
    with pytest.raises(ValueError, match="plain Attention"):
        analyze.attention_weights(nn.Linear(16, 16), x)


@pytest.mark.numerics
def test_vit_with_zero_queries_and_keys_attends_uniformly(float64):
    bb = tiny_vit()
    dim = bb.model.embed_dim
    with torch.no_grad():
        for block in bb.model.blocks:
            block.attn.qkv.weight[: 2 * dim] = 0  # q = k = 0: every score 0, softmax uniform
            block.attn.qkv.bias[: 2 * dim] = 0
    images = torch.randn(6, 3, 32, 32)
    result = analyze.layer_features(bb, images, images=6, erf_images=0, batch_size=4)
    rows = by_site(result)
    want = mean_pairwise_distance(4, 4, 8, 8)
    for name in ("block.0", "block.1"):
        assert rows[name]["attention_distance"] == pytest.approx(want, rel=1e-10)
        assert rows[name]["attention_distance_fraction"] == pytest.approx(want / 32, rel=1e-10)
        assert rows[name]["attention_prefix_mass"] == pytest.approx(1 / 17, rel=1e-10)
        assert len(rows[name]["attention_heads"]["distance"]) == bb.model.blocks[0].attn.num_heads
    assert "attention_distance" not in rows["embed"] and "attention_distance" not in rows["pre_logits"]
    assert rows["pre_logits"]["cka_final"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.numerics
def test_cka_per_site_equals_cka_of_captured_features_in_any_number_of_passes(float64):
    bb = tiny_vit().eval()
    images = torch.randn(10, 3, 32, 32)
    one_pass = analyze.layer_features(bb, images, images=10, erf_images=0, batch_size=4)
    many = analyze.layer_features(bb, images, images=10, erf_images=0, batch_size=3, memory=1)
    with torch.no_grad():
        captured = {n: bb.site(n).capture(bb.model, images) for n in ("embed", "block.0", "block.1")}
        captured["pre_logits"] = bb.site("pre_logits").capture(bb.model, images)
    rows, rows_many = by_site(one_pass), by_site(many)
    assert list(rows) == ["embed", "block.0", "block.1", "pre_logits"]
    for name, prev in (("embed", None), ("block.0", "embed"), ("block.1", "block.0")):
        want = analyze.linear_cka(captured[name], captured["pre_logits"])
        assert rows[name]["cka_final"] == pytest.approx(want, abs=1e-12)
        assert rows_many[name]["cka_final"] == pytest.approx(want, abs=1e-12)
        if prev:
            want = analyze.linear_cka(captured[name], captured[prev])
            assert rows[name]["cka_previous"] == pytest.approx(want, abs=1e-12)
    mean = by_site(analyze.layer_features(bb, images, images=10, erf_images=0, pool="mean"))
    want = analyze.linear_cka(captured["block.1"].mean(1), captured["pre_logits"])
    assert mean["block.1"]["cka_final"] == pytest.approx(want, abs=1e-12)
    assert by_site(many)["block.1"]["attention_distance"] == pytest.approx(
        rows["block.1"]["attention_distance"], rel=1e-12
    )


def test_image_subset_is_fixed_and_bad_counts_are_refused():
    bb = tiny_vit()
    images = torch.randn(9, 3, 32, 32)
    a = analyze.layer_features(bb, images, images=5, erf_images=2, seed=3)
    b = analyze.layer_features(bb, images, images=5, erf_images=2, seed=3)
    assert a["rows"] == b["rows"] and a["images"] == 5 and a["erf_images"] == 2
    with pytest.raises(ValueError, match="images must be positive"):
        analyze.layer_features(bb, images, images=0)
    with pytest.raises(KeyError, match="no site 'block.7'"):
        analyze.layer_features(bb, images, sites=["block.7"])


# ------------------------------------------------------------------------------- receptive field
def conv_stack(kernel: int, layers: int, channels: int = 2) -> nn.Sequential:
    convs = []
    for i in range(layers):
        conv = nn.Conv2d(3 if i == 0 else channels, channels, kernel, padding=kernel // 2, bias=False)
        nn.init.constant_(conv.weight, 1.0)
        convs.append(conv)
    return nn.Sequential(*convs)


def erf_radii(net: nn.Module, size: int = 11) -> dict[float, float]:
    site = Site("s", SitePoint(net[-1], "nchw"))
    batches = [torch.rand(3, 3, size, size), torch.rand(2, 3, size, size)]
    mass, grid = analyze.erf_mass(net, site, batches)
    assert grid == (size, size)
    return mass, analyze.mass_radii(mass, analyze.input_centre(grid, (size, size)))


def radius_by_hand(weights: dict[tuple[int, int], float], q: float) -> float:
    """The smallest distance from the centre holding ``q`` of the mass (offsets → mass), by enumeration."""
    total = sum(weights.values())
    for r in sorted({math.hypot(*o) for o in weights}):
        if sum(w for o, w in weights.items() if math.hypot(*o) <= r + 1e-12) >= q * total - 1e-12:
            return r
    raise AssertionError


def test_erf_of_1x1_convolutions_is_the_centre_pixel():
    mass, radii = erf_radii(conv_stack(1, 3))
    assert radii == {0.5: 0.0, 0.9: 0.0}
    assert mass[5, 5] > 0 and mass.sum() == mass[5, 5]


def test_erf_grows_with_3x3_convolutions_as_worked_out_by_hand():
    _, one = erf_radii(conv_stack(3, 1))
    assert one == {0.5: 1.0, 0.9: pytest.approx(math.sqrt(2))}  # 5 of 9 pixels within 1, all within √2
    mass, two = erf_radii(conv_stack(3, 2))
    paths = [1, 2, 3, 2, 1]  # two box filters: the 1-D mass at offsets -2..2
    weights = {(dy, dx): paths[dy + 2] * paths[dx + 2] for dy in range(-2, 3) for dx in range(-2, 3)}
    assert two == {q: pytest.approx(radius_by_hand(weights, q)) for q in (0.5, 0.9)}
    assert two[0.9] > one[0.9]
    window = mass[3:8, 3:8]
    want = torch.tensor(paths, dtype=torch.float64)
    assert torch.allclose(window / window[2, 2], torch.outer(want, want) / 9)
    assert mass.sum() == pytest.approx(window.sum())


def test_erf_centre_of_a_coarser_grid():
    assert analyze.input_centre((7, 7), (7, 7)) == (3.0, 3.0)
    assert analyze.input_centre((4, 4), (32, 32)) == (19.5, 19.5)  # position 2 covers pixels 16..23


def test_stage_sites_share_their_last_block_and_cnn_sites_get_receptive_fields():
    bb = vprompt.backbone("resnet18", pretrained=False, img_size=32, init_seed=0)
    images = torch.randn(6, 3, 32, 32)
    result = analyze.layer_features(bb, images, sites=["block.1", "stage.0", "block.3"], erf_images=2)
    rows = by_site(result)
    assert list(rows) == ["block.1", "stage.0", "block.3", "pre_logits"]  # forward order
    for key in ("cka_final", "erf_r50", "erf_r90"):
        assert rows["stage.0"][key] == rows["block.1"][key]
    assert rows["block.3"]["erf_r50"] > rows["block.1"]["erf_r50"] > 0
    assert "attention_distance" not in rows["block.1"]


# ------------------------------------------------------------------------------------ prompted runs
def test_prompted_features_differ_only_from_the_prompted_site_on():
    bb = tiny_vit()
    tuned = vprompt.attach(bb, "ap", site="block.0")
    with torch.no_grad():
        for p in tuned.method.parameters():
            p.normal_()
    images = torch.randn(8, 3, 32, 32)
    prompted = analyze.layer_features(tuned, images, erf_images=2)
    plain = analyze.layer_features(tuned.unload(), images, erf_images=2)
    assert prompted["prompted"] and not plain["prompted"]
    same = analyze.cka(prompted["grams"]["embed"], plain["grams"]["embed"])
    assert same == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(prompted["grams"]["embed"], plain["grams"]["embed"])
    assert not torch.equal(prompted["grams"]["block.0"], plain["grams"]["block.0"])


def test_cli_analyses_a_backbone_on_packaged_data_and_a_run(tmp_path, capsys):
    out = tmp_path / "a"
    argv = ["analyze", "layers", "vit_tiny_patch16_224", "--random-init", "--img-size", "32"]
    argv += ["--data", "mnist-5k", "--images", "12", "--erf-images", "2", "--batch-size", "6"]
    assert main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CKA→pre_logits" in printed and "attn dist (px)" in printed and "ERF r50 (px)" in printed
    saved = json.loads((out / "layer-analysis.json").read_text())
    assert saved["data"] == "mnist-5k" and saved["images"] == 12 and saved["split"] == "test"
    assert [r["site"] for r in saved["rows"]] == ["embed", *[f"block.{i}" for i in range(12)], "pre_logits"]
    assert (out / "layer-analysis.csv").read_text().startswith("site,depth,layout,shape,")

    run = tmp_path / "run"
    vprompt.train(**dict(TINY, epochs=1), method="ap", method_options={"site": "block.1"}, output=run)
    argv = ["analyze", "layers", "--run", str(run), "--sites", "embed", "block.1", "--images", "8"]
    assert main([*argv, "--erf-images", "1", "--output", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "CKA prompted↔plain" in printed and "CKA→pre_logits prompted" in printed
    rows = {r["site"]: r for r in json.loads((tmp_path / "b" / "layer-analysis.json").read_text())["rows"]}
    assert rows["embed"]["cka_prompted_plain"] == pytest.approx(1.0, abs=1e-6)
    assert rows["pre_logits"]["cka_final_prompted"] == pytest.approx(1.0, abs=1e-9)


def test_cli_errors(tmp_path, capsys):
    assert main(["analyze", "layers", "--data", "mnist-5k"]) == 2
    assert "name a BACKBONE" in capsys.readouterr().err
    assert main(["analyze", "layers", "vit_tiny_patch16_224", "--random-init"]) == 2
    assert "--data is needed" in capsys.readouterr().err
    assert main(["analyze", "layers", "resnet18", "--run", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err


def test_layer_sweep_adds_the_analysis_to_its_table_and_figure(monkeypatch, tmp_path, capsys):
    from tiny_sweeps import FakeTrain

    from vprompt.tools import executors

    fake = FakeTrain(
        lambda config: {"test_accuracy": {"embed": 40.0, "block.3": 60.0}[config["method_options"]["site"]]}
    )
    monkeypatch.setattr(executors, "train", fake)
    argv = ["sweep", "layers", "--backbone", "vit_tiny_patch16_224", "--random-init", "--img-size", "32"]
    argv += ["--data", "mnist-5k", "--epochs", "1", "--no-progress", "--device", "cpu"]
    argv += ["--sites", "embed", "block.3", "--analyze", "--analyze-images", "8", "--output", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "CKA→pre_logits" in printed and "attn dist / image" in printed and "ERF r50 / image" in printed
    saved = json.loads((tmp_path / "layer-analysis.json").read_text())
    assert saved["split"] == "test" and saved["images"] == 8 and saved["erf_images"] == 8
    assert [r["site"] for r in saved["rows"]] == ["embed", "block.3", "pre_logits"]
    header = (tmp_path / "layers-full.csv").read_text().splitlines()[0].split(",")
    assert {"cka_final", "cka_previous", "attention_distance_fraction", "erf_r50_fraction"} <= set(header)
    assert (tmp_path / "layers-full.png").is_file()
    rows = {r["site"]: r for r in saved["rows"]}
    table = (tmp_path / "layers-full.md").read_text()
    assert f"{rows['block.3']['cka_final']:.2f}" in table
    # run again: the saved analysis is reused (same settings), not recomputed
    monkeypatch.setattr(analyze, "layer_features", lambda *a, **k: pytest.fail("recomputed"))
    assert main(argv) == 0
