"""vprompt against numbers computed with the official VPT, VAPT and ILM-VP code.

``fixtures/official_reference.json`` holds values the official code produced (KMnP/vpt,
Minhchuyentoancbn/VAPT, OPTML-Group/ILM-VP; commits and procedure in ``fixtures/README.md``). The
inputs are generated here, by the functions below, and the private script that ran the official code
built its models from exactly these tensors (copied bit for bit into the official modules). Only the
numbers are stored; none of the official code is.

- VPT-shallow, VPT-deep, VAPT on a seeded random ViT-B/16 at 224, eval mode: the logits for two fixed
  inputs and the gradient norm of every trainable tensor (per layer where a tensor stacks layers) for
  the cross-entropy to two fixed labels;
- ILM-VP's expansive prompt on a fixed image and prompt, and its frequency label mapping (the
  ``[source × target]`` counts and the greedy assignment) for a fixed logits matrix.

The references were computed in float64; vprompt runs in float32 and must agree to 1e-4 relative.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vprompt
from vprompt.methods.label_mapping import count_pairs, greedy_mapping
from vprompt.methods.vapt import VAPT, VAPTConfig
from vprompt.methods.vp import ExpansiveConfig, ExpansivePrompt
from vprompt.methods.vpt import VPTConfig, VPTDeep, VPTShallow
from vprompt.model import TunedModel

pytestmark = pytest.mark.numerics

FIXTURE = Path(__file__).parent / "fixtures" / "official_reference.json"
RTOL = 1e-4

# ------------------------------------------------------------------------------------------------
# The documented procedure (fixtures/README.md). Changing anything here invalidates the fixture.

NUM_CLASSES = 10
LABELS = (3, 7)
WEIGHT_SEED, INPUT_SEED, METHOD_SEED, ILM_SEED = 0, 1, 2, 3
#: tensors whose leading axis stacks layers: their gradient norms are recorded per layer
PER_LAYER = ("prompts", "kernels")
METHODS = {
    "vpt-shallow": lambda: VPTShallow(VPTConfig(num_prompts=10)),
    "vpt-deep": lambda: VPTDeep(VPTConfig(num_prompts=10)),
    "vapt": lambda: VAPT(VAPTConfig(num_prompts=10, hidden=8, kernel=2)),
}
#: ILM-VP's fixed case: (backbone side, inner side); 224 − 127 is odd (the extra pixel's side matters)
EXPANSIVE_CASES = {"even": (224, 128), "odd": (224, 127)}
#: ILM-VP's label mapping case: samples, source classes, target classes
ILM_SHAPE = (200, 50, 10)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def redraw_(named_parameters: Iterable[tuple[str, torch.Tensor]], seed: int) -> None:
    """Overwrite every parameter from one generator, in lexicographic order of the names.

    Each tensor takes ``n = torch.randn(shape, generator=g)`` (float32) and becomes: ``0.1·n`` for a
    ``bias``; ``1 + 0.1·n`` for a norm's ``weight``; ``n / sqrt(fan_in)`` for any other ``weight`` of
    2+ dimensions (``fan_in`` = the product of all but the first axis); ``n`` otherwise (CLS token,
    position embedding, prompts, VAPT's kernels).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(named_parameters, key=lambda item: item[0]):
            noise = torch.randn(p.shape, generator=generator)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                value = 0.1 * noise
            elif leaf == "weight" and "norm" in name:
                value = 1 + 0.1 * noise
            elif leaf == "weight" and p.dim() >= 2:
                value = noise / math.sqrt(p[0].numel())
            else:
                value = noise
            p.copy_(value)


def reference_backbone() -> vprompt.Backbone:
    """timm ``vit_base_patch16_224`` with a new 10-class head, every parameter redrawn (WEIGHT_SEED)."""
    backbone = vprompt.backbone("vit_base_patch16_224", pretrained=False, num_classes=NUM_CLASSES)
    redraw_(backbone.model.named_parameters(), WEIGHT_SEED)
    return backbone.eval()


def reference_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images ``randn(2, 3, 224, 224)`` from INPUT_SEED (already normalised) and their labels."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    return torch.randn(2, 3, 224, 224, generator=generator), torch.tensor(LABELS)


def attach_reference_method(backbone: vprompt.Backbone, name: str) -> TunedModel:
    """The method attached with its parameters redrawn (METHOD_SEED), in eval mode."""
    model = TunedModel(backbone, METHODS[name]())
    redraw_(model.method.named_parameters(), METHOD_SEED)
    return model.eval()


def trainable_tensors(model: TunedModel) -> dict[str, torch.Tensor]:
    """The method's parameters and the head's, by name (``head.weight``, ``head.bias``)."""
    named = dict(model.method.named_parameters())
    named.update({f"head.{n}": p for n, p in model.backbone.head.named_parameters()})
    return named


def gradient_norms(named: dict[str, torch.Tensor], grads: Iterable[torch.Tensor]) -> dict[str, float]:
    """2-norm of each gradient; tensors in PER_LAYER give one entry per layer (``kernels.3``)."""
    norms = {}
    for (name, _), grad in zip(named.items(), grads, strict=True):
        grad = grad.double()
        if name in PER_LAYER:
            norms.update({f"{name}.{i}": float(g.norm()) for i, g in enumerate(grad)})
        else:
            norms[name] = float(grad.norm())
    return norms


def run_reference_method(backbone: vprompt.Backbone, name: str) -> dict:
    """Logits, loss and gradient norms of one method on the reference inputs."""
    images, labels = reference_inputs()
    model = attach_reference_method(backbone, name)
    try:
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        named = trainable_tensors(model)
        grads = torch.autograd.grad(loss, list(named.values()))
        return {
            "logits": logits.detach().double().tolist(),
            "loss": float(loss.detach()),
            "grad_norms": gradient_norms(named, grads),
        }
    finally:
        model.unload()


def expansive_inputs(case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels ``rand(2, 3, inner, inner)`` in [0, 1], the prompt ``θ = randn(3, side, side)`` (ILM_SEED),
    and fixed output positions to compare: 256 seeded ``(n, c, i, j)`` plus the corners of the inner
    image and the pixels just outside them."""
    side, inner = EXPANSIVE_CASES[case]
    generator = torch.Generator().manual_seed(ILM_SEED)
    pixels = torch.rand(2, 3, inner, inner, generator=generator)
    theta = torch.randn(3, side, side, generator=generator)
    sampled = torch.stack(
        [torch.randint(0, hi, (256,), generator=generator) for hi in (2, 3, side, side)], dim=1
    )
    lo, hi = (side - inner) // 2, (side - inner) // 2 + inner - 1
    edges = [
        (n, c, i, j)
        for n in (0, 1)
        for c in (0, 2)
        for i in (lo - 1, lo, lo + 1, hi, hi + 1)
        for j in (lo, hi + 1)
    ]
    return pixels, theta, torch.cat([sampled, torch.tensor(edges)])


def ilm_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``randint(0, 4, (200, 50))`` (many ties) and labels covering all 10 targets (ILM_SEED)."""
    samples, num_source, num_target = ILM_SHAPE
    generator = torch.Generator().manual_seed(ILM_SEED)
    logits = torch.randint(0, 4, (samples, num_source), generator=generator).float()
    labels = torch.cat(
        [torch.arange(num_target), torch.randint(0, num_target, (samples - num_target,), generator=generator)]
    )
    return logits, labels[torch.randperm(samples, generator=generator)]


def output_summary(image: torch.Tensor, positions: torch.Tensor) -> dict:
    """Per-image, per-channel sums and sums of squares (float64) and the values at ``positions``."""
    image = image.detach().double()
    n, c, i, j = positions.unbind(1)
    return {
        "sum": image.sum(dim=(2, 3)).tolist(),
        "sum_sq": image.square().sum(dim=(2, 3)).tolist(),
        "positions": positions.tolist(),
        "values": image[n, c, i, j].tolist(),
    }


# ------------------------------------------------------------------------------------------------
# The tests


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def vprompt_results() -> dict:
    """All three methods on one reference backbone (built once: ViT-B/16 forward + backward ×3)."""
    backbone = reference_backbone()
    return {name: run_reference_method(backbone, name) for name in METHODS}


def assert_relative(got, want, what: str) -> None:
    got, want = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    assert got.shape == want.shape, what
    error = float((got - want).abs().max() / want.abs().max())
    assert error <= RTOL, f"{what}: max |vprompt − official| / max |official| = {error:.3g} > {RTOL}"


def test_the_fixture_records_its_provenance(reference):
    commits = reference["commits"]
    assert set(commits) == {"KMnP/vpt", "Minhchuyentoancbn/VAPT", "OPTML-Group/ILM-VP"}
    assert all(len(sha) == 40 for sha in commits.values())
    assert set(reference["methods"]) == set(METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_logits_match_the_official_code(reference, vprompt_results, method):
    want = reference["methods"][method]
    got = vprompt_results[method]
    assert_relative(got["logits"], want["logits"], f"{method} logits")
    assert abs(got["loss"] - want["loss"]) <= RTOL * abs(want["loss"])


@pytest.mark.parametrize("method", list(METHODS))
def test_gradient_norms_match_the_official_code(reference, vprompt_results, method):
    want = reference["methods"][method]["grad_norms"]
    got = vprompt_results[method]["grad_norms"]
    assert set(got) == set(want)  # the same trainable tensors, layer for layer
    expected_count = {"vpt-shallow": 3, "vpt-deep": 14, "vapt": 1 + 11 + 22 + 22 + 2 + 2}[method]
    assert len(want) == expected_count
    bad = {n: (got[n], want[n]) for n in want if abs(got[n] - want[n]) > RTOL * want[n]}
    shown = dict(list(bad.items())[:4])
    assert not bad, f"{method}: {len(bad)} gradient norms off by more than {RTOL} relative, e.g. {shown}"
    assert min(want.values()) > 0  # every tensor gets a gradient: none of the checks is vacuous


def expansive_output(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    side, inner = EXPANSIVE_CASES[case]
    pixels, theta, positions = expansive_inputs(case)
    backbone = vprompt.backbone("resnet18", pretrained=False, num_classes=NUM_CLASSES, img_size=side)
    backbone.data_config.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)  # ILM-VP's normalisation
    method = ExpansivePrompt(ExpansiveConfig(inner_size=inner))
    model = TunedModel(backbone, method)
    try:
        with torch.no_grad():
            method.theta.copy_(theta)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():  # the data pipeline hands the method normalised images at the inner size
            return method.prompt_input((pixels - mean) / std), positions
    finally:
        model.unload()


def check_expansive(reference: dict, case: str) -> None:
    want = reference["ilm_vp"]["expansive"][case]
    image, positions = expansive_output(case)
    got = output_summary(image, positions)
    assert image.shape == (2, 3, *(EXPANSIVE_CASES[case][0],) * 2)
    assert got["positions"] == want["positions"]
    for key in ("sum", "sum_sq", "values"):
        assert_relative(got[key], want[key], f"expansive {case} {key}")


def test_expansive_prompt_matches_ilm_vp(reference):
    check_expansive(reference, "even")


def test_expansive_prompt_matches_ilm_vp_for_an_odd_padding(reference):  # the extra pixel: top/left
    check_expansive(reference, "odd")


def test_frequency_label_mapping_matches_ilm_vp(reference):
    want = reference["ilm_vp"]["label_mapping"]
    logits, labels = ilm_inputs()
    _, num_source, num_target = ILM_SHAPE
    loader = list(zip(logits.split(64), labels.split(64), strict=True))
    counts = count_pairs(torch.nn.Identity(), loader, num_source, num_target)
    assert counts.tolist() == want["counts"]
    assert greedy_mapping(counts).tolist() == want["mapping"]
