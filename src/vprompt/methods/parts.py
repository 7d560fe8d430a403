"""Building blocks shared by the adaptive prompt methods (``vapt``, ``aap``).

- :class:`FeatureProjector`: VAPT's low-rank feature projector ``W2·ReLU(dropout(W1·z))`` (``D → hidden → D``,
  no biases), with VAPT's residual ``z + ...`` or, for a generator whose output must start at zero,
  without it and with ``W2`` zero-initialised.
- :func:`shared_depthwise_conv`: ONE ``K×K`` kernel shared by all channels, applied depthwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureProjector(nn.Module):
    """``z + W2·ReLU(dropout(W1·z))`` (``residual``) or ``W2·ReLU(dropout(W1·z))``; ``W1: D→hidden``,
    ``W2: hidden→D``, no biases. ``zero_output`` initialises ``W2`` to zero (the term starts at zero)."""

    def __init__(
        self, dim: int, hidden: int, dropout: float, residual: bool = True, zero_output: bool = False
    ):
        super().__init__()
        self.residual = residual
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        if zero_output:
            nn.init.zeros_(self.fc2.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.fc2(F.relu(self.dropout(self.fc1(z))))
        return z + out if self.residual else out


def shared_depthwise_conv(x: torch.Tensor, kernel: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """Convolve every channel of ``x`` ``(B, C, H, W)`` with the same ``kernel`` (``K×K``, any leading
    singleton axes), no bias: a depthwise convolution whose C kernels are one shared tensor."""
    k = kernel.shape[-1]
    channels = x.shape[1]
    return F.conv2d(x, kernel.reshape(1, 1, k, k).expand(channels, 1, k, k), padding=padding, groups=channels)
