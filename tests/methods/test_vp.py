"""Input-level visual prompts (vp-pad, vp-expansive) and the label mappings onto the source classifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vprompt
from vprompt import MethodNotApplicable, TunedModel
from vprompt.methods import label_mapping
from vprompt.methods.label_mapping import count_pairs, greedy_mapping
from vprompt.methods.vp import ExpansiveConfig, ExpansivePrompt, PadConfig, PadPrompt

SIZE = 32


@pytest.fixture(scope="module")
def source_bb():
    """A tiny ResNet keeping its 1000-class source classifier (new_head False)."""
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=None, img_size=SIZE)
    assert not bb.new_head and bb.num_classes == 1000
    return bb


def new_head_bb(classes=4):
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=classes, img_size=SIZE)
    assert bb.new_head
    return bb


def loader(n=3, batch=4, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, SIZE, SIZE, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def pad(bb, **options):
    return TunedModel(bb, PadPrompt(PadConfig(**options)))


def expansive(bb, **options):
    return TunedModel(bb, ExpansivePrompt(ExpansiveConfig(**options)))


# ------------------------------------------------------------------------------------------ vp-pad


def test_pad_parameter_count_at_224():
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=10, img_size=224)
    model = pad(bb)
    m = model.method
    assert m.width == 30
    assert tuple(m.pad_up.shape) == tuple(m.pad_down.shape) == (3, 30, 224)
    assert tuple(m.pad_left.shape) == tuple(m.pad_right.shape) == (3, 164, 30)
    assert model.trainable_parameters(head=False) == 69_840
    assert model.trainable_parameters() == 69_840 + 512 * 10 + 10
    model.unload()
    # with a label mapping the (source) head is not trained
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=None, img_size=224)
    model = pad(bb, mapping="rlm", num_classes=10)
    assert model.trainable_parameters() == model.trainable_parameters(head=False) == 69_840
    model.unload()


def test_pad_width_scales_with_the_input_size(source_bb):
    model = pad(source_bb, mapping="rlm", num_classes=4)
    assert model.method.width == round(30 * SIZE / 224) == 4
    assert model.trainable_parameters() == 2 * 3 * 4 * SIZE + 2 * 3 * (SIZE - 8) * 4
    model.unload()
    model = pad(source_bb, mapping="rlm", num_classes=4, width=2)
    assert model.method.width == 2 and tuple(model.method.pad_left.shape) == (3, SIZE - 4, 2)
    model.unload()
    with pytest.raises(MethodNotApplicable, match="width"):
        pad(source_bb, mapping="rlm", num_classes=4, width=16)


def test_pad_prompt_touches_only_the_border(source_bb):
    model = pad(source_bb, mapping="rlm", num_classes=4)
    w = model.method.width
    seen = []
    handle = source_bb.model.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        model(x)
    handle.remove()
    prompted = seen[0]
    torch.testing.assert_close(prompted[..., w:-w, w:-w], x[..., w:-w, w:-w], rtol=0, atol=0)
    m = model.method
    torch.testing.assert_close(prompted[..., :w, :], x[..., :w, :] + m.pad_up, rtol=0, atol=0)
    torch.testing.assert_close(prompted[..., -w:, :], x[..., -w:, :] + m.pad_down, rtol=0, atol=0)
    torch.testing.assert_close(prompted[..., w:-w, :w], x[..., w:-w, :w] + m.pad_left, rtol=0, atol=0)
    torch.testing.assert_close(prompted[..., w:-w, -w:], x[..., w:-w, -w:] + m.pad_right, rtol=0, atol=0)
    model.unload()


# ------------------------------------------------------------------------------------- vp-expansive


def test_expansive_parameter_count_and_defaults():
    bb = vprompt.backbone("resnet18", pretrained=False, num_classes=10, img_size=224)
    model = expansive(bb)
    assert model.method.inner == 128  # ILM-VP's 128 at 224
    assert model.trainable_parameters(head=False) == 3 * 224 * 224
    assert torch.equal(model.method.theta, torch.zeros(3, 224, 224))
    assert "mask" not in model.method.state_dict()  # non-persistent
    model.unload()
    assert expansive(new_head_bb()).method.inner == 18  # scaled: 128 · 32 / 224
    with pytest.raises(MethodNotApplicable, match="inner_size"):
        expansive(new_head_bb(), inner_size=32)  # must be smaller than the 32-px input


def test_expansive_output(source_bb):
    inner = 16
    model = expansive(source_bb, mapping="rlm", num_classes=4, inner_size=inner)
    m = model.method
    with torch.no_grad():
        m.theta.normal_()
    mean = torch.tensor(source_bb.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(source_bb.data_config["std"]).view(1, 3, 1, 1)
    lo = (SIZE - inner) // 2
    inside = (..., slice(lo, lo + inner), slice(lo, lo + inner))
    border = m.mask.expand(3, SIZE, SIZE).bool()
    assert border.sum() == 3 * (SIZE * SIZE - inner * inner)
    assert not border[(slice(None), *inside[1:])].any()

    pixels = torch.rand(2, 3, SIZE, SIZE)
    x = (pixels - mean) / std
    with torch.no_grad():
        out = m.prompt_input(x)
    resized = F.interpolate(pixels, size=(inner, inner), mode="bilinear", align_corners=False, antialias=True)
    # element-wise float32 arithmetic on O(1) values (a few ulps, ~1e-7): 1e-4 is a margin of ~1000
    torch.testing.assert_close(out[inside], ((resized - mean) / std), atol=1e-4, rtol=1e-4)
    expected_border = ((torch.sigmoid(m.theta) - mean) / std).expand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(out[:, border], expected_border[:, border], atol=1e-4, rtol=1e-4)

    # an image already at the inner size is padded without resizing: the interior is the image itself
    small = torch.randn(2, 3, inner, inner)
    with torch.no_grad():
        out = m.prompt_input(small)
        logits = model(small)  # the hook pads it to the backbone size before the stem
    assert out.shape == (2, 3, SIZE, SIZE) and logits.shape == (2, 4)
    torch.testing.assert_close(out[inside], small, atol=1e-4, rtol=1e-4)
    model.unload()


def test_expansive_starts_at_half_grey_border_and_trains():
    model = expansive(new_head_bb(), inner_size=16)
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model.method.prompt_input(x)
    mean = torch.tensor(model.backbone.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.backbone.data_config["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(out[..., 0:1, 0:1], ((0.5 - mean) / std).expand(2, 3, 1, 1))
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 3])).backward()
    assert model.method.theta.grad.abs().sum() > 0
    assert model.backbone.head.weight.grad is not None  # linear: the new head trains
    model.unload()


# ----------------------------------------------------------------------------------- label mappings


def test_greedy_mapping_known_answer():
    counts = torch.tensor([[5, 1, 0], [4, 6, 0], [0, 7, 2], [3, 0, 1]])
    # 7 → target 1 gets source 2; then 5 → target 0 gets source 0; then 1 → target 2 gets source 3
    # (a per-column argmax would give source 2 to both targets 1 and 2)
    assert greedy_mapping(counts).tolist() == [0, 2, 3]
    # ties: the lowest index wins
    assert greedy_mapping(torch.zeros(5, 3, dtype=torch.long)).tolist() == [0, 1, 2]
    assert greedy_mapping(torch.tensor([[2, 2], [2, 2]])).tolist() == [0, 1]
    big = torch.randint(0, 50, (100, 40), generator=torch.Generator().manual_seed(1))
    mapping = greedy_mapping(big)
    assert mapping.dtype == torch.long and len(set(mapping.tolist())) == 40
    with pytest.raises(ValueError, match="distinct"):
        greedy_mapping(torch.zeros(2, 3))


class Planted(nn.Module):
    """Source logits planted through the input: class = the first pixel's value."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.one_hot(x[:, 0, 0, 0].long(), 6).float() + self.weight


def test_count_pairs_counts_source_argmax_against_labels_and_restores_mode():
    def images(classes):
        x = torch.zeros(len(classes), 3, 2, 2)
        x[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.float)
        return x

    data = [(images([5, 5, 1]), torch.tensor([0, 0, 2])), (images([5, 3]), torch.tensor([1, 0]))]
    model = Planted().train()
    counts = count_pairs(model, data, 6, 3)
    assert model.training
    expected = torch.zeros(6, 3, dtype=torch.long)
    expected[5, 0], expected[1, 2], expected[5, 1], expected[3, 0] = 2, 1, 1, 1
    assert torch.equal(counts, expected)
    with pytest.raises(ValueError, match="out of range"):
        count_pairs(model, [(images([1]), torch.tensor([3]))], 6, 3)


def test_count_pairs_uses_the_prompted_source_logits(source_bb):
    model = pad(source_bb, mapping="flm", num_classes=4)
    data = loader()
    counts = count_pairs(model, data, 1000, 4)
    with torch.no_grad():
        predicted = torch.cat([model.backbone(x).argmax(-1) for x, _ in data])
    labels = torch.cat([y for _, y in data])
    assert counts.sum() == 12
    for p, y in zip(predicted.tolist(), labels.tolist(), strict=True):
        assert counts[p, y] >= 1
    model.unload()


def test_flm_is_fitted_once_ilm_every_epoch(source_bb, monkeypatch):
    first, second = torch.eye(6, 3)[[2, 0, 1, 3, 4, 5]], torch.eye(6, 3)[[5, 4, 3, 0, 1, 2]]
    planted = iter([first, first, second])  # flm epoch 0, ilm epoch 0, ilm epoch 1
    monkeypatch.setattr(label_mapping, "count_pairs", lambda *a: next(planted))
    source = 6
    flm = pad(source_bb, mapping="flm", num_classes=3)
    ilm = pad(source_bb, mapping="ilm", num_classes=3)
    for model in (flm, ilm):
        model.method._num_source = source  # planted counts are [6 × 3]
    flm.method.on_epoch_start(flm, [], 0)
    assert flm.method.mapping.tolist() == [1, 2, 0]
    flm.method.on_epoch_start(flm, [], 1)
    assert flm.method.mapping.tolist() == [1, 2, 0]  # kept
    ilm.method.on_epoch_start(ilm, [], 0)
    assert ilm.method.mapping.tolist() == [1, 2, 0]
    ilm.method.on_epoch_start(ilm, [], 1)
    assert ilm.method.mapping.tolist() == [3, 4, 5]  # refitted
    flm.unload(), ilm.unload()


def test_ilm_mapping_is_the_greedy_mapping_of_the_prompted_model(source_bb):
    model = pad(source_bb, mapping="ilm", num_classes=4)
    data = loader()
    model.method.on_epoch_start(model, data, 0)
    assert model.method.mapping.tolist() == greedy_mapping(count_pairs(model, data, 1000, 4)).tolist()
    assert len(set(model.method.mapping.tolist())) == 4
    x = data[0][0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.backbone(x)[:, model.method.mapping], rtol=0, atol=0)
    # the mapping is a persistent buffer: saved with the adapter and loaded back
    state = model.trainable_state_dict()
    assert torch.equal(state["method.mapping"], model.method.mapping)
    model.unload()
    again = pad(source_bb, mapping="ilm", num_classes=4)
    again.load_trainable_state_dict(state)
    assert again.method.is_fitted() and torch.equal(again.method.mapping, state["method.mapping"])
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.method.map_logits(source_bb(x)))
    again.unload()


def test_rlm_is_distinct_and_seeded(source_bb):
    def mapping(seed):
        model = pad(source_bb, mapping="rlm", num_classes=50, mapping_seed=seed)
        result = model.method.mapping.clone()
        model.unload()
        return result

    a, b, c = mapping(3), mapping(3), mapping(4)
    assert a.dtype == torch.long and len(set(a.tolist())) == 50 and a.min() >= 0 and a.max() < 1000
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unfitted_mapping_is_a_clear_error(source_bb):
    model = pad(source_bb, mapping="flm", num_classes=4)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        model(torch.randn(1, 3, SIZE, SIZE))
    model.unload()


@pytest.mark.parametrize(
    "method, options, source, match",
    [
        (pad, dict(mapping="flm", num_classes=4), False, "num_classes=None"),
        (expansive, dict(mapping="ilm", num_classes=4, inner_size=16), False, "num_classes=None"),
        (pad, dict(), True, "new linear head"),
        (pad, dict(mapping="flm"), True, "num_classes"),
        (pad, dict(mapping="rlm", num_classes=1001), True, "num_classes"),
        (pad, dict(mapping="nearest", num_classes=4), True, "unknown mapping"),
    ],
)
def test_head_choice_errors(source_bb, method, options, source, match):
    bb = source_bb if source else new_head_bb()
    flags = {n: p.requires_grad for n, p in bb.named_parameters()}
    with pytest.raises(MethodNotApplicable, match=match):
        method(bb, **options)
    assert flags == {n: p.requires_grad for n, p in bb.named_parameters()}  # left as it was
    assert not bb.model._forward_pre_hooks  # no hook left behind


@pytest.mark.parametrize("method", [pad, expansive])
def test_mapping_trains_the_prompt_not_the_source_head(source_bb, method):
    options = dict(inner_size=16) if method is expansive else {}
    model = method(source_bb, mapping="rlm", num_classes=4, **options)
    assert not model.method.trains_head and model.num_classes == 4
    assert all(not p.requires_grad for p in source_bb.head.parameters())
    model.train()
    x, y = loader(n=1)[0]
    logits = model(x)
    assert logits.shape == (4, 4)
    F.cross_entropy(logits, y).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)
    # (randomly initialised timm ResNets zero their residual branches' last BN, so only part of the
    # border reaches the logits; the prompt as a whole gets a gradient)
    assert sum(p.grad.abs().sum() for p in trained) > 0
    assert all(p.grad is None for p in source_bb.parameters())
    assert not source_bb.training  # the frozen backbone stays in eval mode
    model.zero_grad(set_to_none=True)
    model.unload()


# ------------------------------------------------------------------ label mappings: first K, interval
def test_first_k_mapping_reads_the_first_source_classes(source_bb):
    model = pad(source_bb, mapping="first", num_classes=4)
    assert model.method.is_fitted() and model.method.mapping.tolist() == [0, 1, 2, 3]
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), model.backbone(x)[:, :4])  # Bahng et al.: output[:, range(K)]
    model.method.on_epoch_start(model, loader(), epoch=0)  # never refitted
    assert model.method.mapping.tolist() == [0, 1, 2, 3]


def test_ilm_refits_every_mapping_interval_epochs(source_bb, monkeypatch):
    model = pad(source_bb, mapping="ilm", num_classes=4, mapping_interval=3)
    fitted = []
    original = model.method.fit_mapping
    monkeypatch.setattr(model.method, "fit_mapping", lambda m, d: fitted.append(1) or original(m, d))
    for epoch in range(7):
        before = len(fitted)
        model.method.on_epoch_start(model, loader(n=1), epoch)
        assert len(fitted) - before == (1 if epoch % 3 == 0 else 0), epoch
    with pytest.raises(MethodNotApplicable, match="mapping_interval"):
        pad(source_bb, mapping="flm", num_classes=4, mapping_interval=2)
    with pytest.raises(MethodNotApplicable, match="mapping_interval"):
        pad(source_bb, mapping="ilm", num_classes=4, mapping_interval=0)
