"""Tolerances for comparing two computations, chosen so that they hold on any CPU.

Exactness is shown in float64: two orders of summation differ there by ~1e-15 relative, so a bound of
1e-10 relative to the tensor's scale has a margin of 10^5 for any kernel set, and still catches a real
fault (a wrong row, a missing term) by many orders of magnitude. Float32 comparisons are bounded by the
float64 error of a float32 run of the reference path itself (what this machine's kernels make of it),
times a wide margin: a tolerance that is not tuned to one CPU's rounding.
"""

from __future__ import annotations

import torch

EXACT_RTOL = 1e-10
FLOAT32_MARGIN = (
    20.0  # the float32 path may be this many times further off than the reference's own float32 run
)
FLOAT32_FLOOR = 1e-6  # relative to the tensor's scale: rounding below this never fails a comparison


def scale(t: torch.Tensor) -> float:
    return max(float(t.detach().abs().max()), 1e-30)


def assert_exact(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Equal up to float64 rounding: ``max|got - want| <= 1e-10 * max|want|`` (both must be float64)."""
    assert got.dtype == want.dtype == torch.float64, (
        f"{what}: compare in float64, got {got.dtype}/{want.dtype}"
    )
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    error = float((got - want).detach().abs().max()) / scale(want) if got.numel() else 0.0
    assert error <= EXACT_RTOL, f"{what}: max |difference| / max |reference| = {error:.3g} > {EXACT_RTOL}"


TRAINED_RTOL = 1e-4


def assert_trained_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Two float32 trainings that differ only in the order of summation (cache or not, 1 or 2 processes).

    Each step rounds at ~1e-7 of a tensor's scale; a few dozen steps stay below ~1e-5 on any kernels, so
    1e-4 of the scale is a wide margin, while one wrong or missing step moves a tensor by far more.
    """
    assert a.keys() == b.keys()
    for k in a:
        error = float((a[k].double() - b[k].double()).abs().max()) / scale(b[k])
        assert error <= TRAINED_RTOL, f"{k}: max |difference| / max |tensor| = {error:.3g} > {TRAINED_RTOL}"


def assert_float32_as_close_as_reference(
    got32: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor, what=""
):
    """``got32`` is within FLOAT32_MARGIN × (the float32 reference's own error) of the float64 reference."""
    ref64 = ref64.detach().double()
    own = float((ref32.detach().double() - ref64).abs().max()) / scale(ref64)
    error = float((got32.detach().double() - ref64).abs().max()) / scale(ref64)
    bound = FLOAT32_MARGIN * max(own, FLOAT32_FLOOR)
    assert error <= bound, (
        f"{what}: relative error {error:.3g} > {bound:.3g} (the float32 reference's own: {own:.3g})"
    )
