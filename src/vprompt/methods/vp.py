"""Input-level visual prompting (VP): a learned perturbation of the pixels, shared by all inputs.

- ``vp-pad`` (Bahng et al., "Exploring Visual Prompts for Adapting Large-Scale Models", 2022): a border
  of learned pixels, ``width`` wide, *added* to the normalised input image; the interior is untouched.
- ``vp-expansive`` (ILM-VP style, Chen et al., "Understanding and Improving Visual Prompting: A
  Label-Mapping Perspective", CVPR 2023): the image is shrunk to ``inner_size``, zero-padded (centred)
  to the backbone's input size, and ``sigmoid(θ)`` is added on the border only; the prompt lives in
  pixel space, so the backbone's normalisation is applied after it.

Both hook the ``input`` site (every backbone has one) and can train a new linear head or map onto the
backbone's own classifier (``mapping``: flm / ilm / rlm, see :mod:`.label_mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from .base import MethodNotApplicable
from .label_mapping import LabelMappedMethod, LabelMappingConfig

#: vp-pad's border width at a 224-px input (Bahng et al.); scaled with the input size
PAD_WIDTH_AT_224 = 30
#: vp-expansive's inner image side at a 224-px input (ILM-VP); scaled with the input size
INNER_AT_224 = 128


@dataclass
class PadConfig(LabelMappingConfig):
    width: int | None = field(
        default=None,
        metadata={"help": "border width in pixels (default: 30 at 224, scaled with the input size)"},
    )


@dataclass
class ExpansiveConfig(LabelMappingConfig):
    inner_size: int | None = field(
        default=None,
        metadata={
            "help": "side the image is resized to before padding (default: 128 at 224, scaled with the "
            "input size; ILM-VP uses 32 for 32-px datasets)"
        },
    )


class PadPrompt(LabelMappedMethod):
    """Additive border prompt on the normalised input: four random-normal pixel strips."""

    name = "vp-pad"
    summary = "visual prompt: a learned pixel border added to the normalised input (Bahng et al. 2022)"
    families = "all"
    config_class = PadConfig
    config: PadConfig

    def attach(self, backbone: Backbone) -> None:
        self.attach_head(backbone)
        channels, height, width = backbone.input_size
        w = self.config.width
        if w is None:
            w = round(PAD_WIDTH_AT_224 * height / 224)
        if not 0 < 2 * w < min(height, width):
            raise MethodNotApplicable(
                f"vp-pad border width {w} does not fit a {height}×{width} input (need 0 < 2·width < side)"
            )
        self.width = w
        self.size = (height, width)
        # drawn on the CPU (same values whatever the device), then moved next to the backbone
        device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
        self.pad_up = nn.Parameter(torch.randn(channels, w, width).to(device))
        self.pad_down = nn.Parameter(torch.randn(channels, w, width).to(device))
        self.pad_left = nn.Parameter(torch.randn(channels, height - 2 * w, w).to(device))
        self.pad_right = nn.Parameter(torch.randn(channels, height - 2 * w, w).to(device))
        self.hook(backbone, "input", self.prompt_input)

    def prompt(self) -> torch.Tensor:
        """The full ``(C, H, W)`` prompt: the four strips around a zero interior."""
        height, width = self.size
        inside = self.pad_left.new_zeros(
            self.pad_left.shape[0], height - 2 * self.width, width - 2 * self.width
        )
        middle = torch.cat((self.pad_left, inside, self.pad_right), dim=2)
        return torch.cat((self.pad_up, middle, self.pad_down), dim=1)

    def prompt_input(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"vp-pad was built for {self.size[0]}×{self.size[1]} inputs, got {x.shape[-2]}×{x.shape[-1]}"
            )
        return x + self.prompt().to(x.dtype)


class ExpansivePrompt(LabelMappedMethod):
    """ILM-VP's expansive prompt: shrink, pad, add ``sigmoid(θ)`` on the border, then normalise."""

    name = "vp-expansive"
    summary = "visual prompt (ILM-VP): image shrunk and padded, a learned sigmoid border, then normalised"
    families = "all"
    config_class = ExpansiveConfig
    config: ExpansiveConfig

    def attach(self, backbone: Backbone) -> None:
        self.attach_head(backbone)
        channels, height, width = backbone.input_size
        inner = self.config.inner_size
        if inner is None:
            inner = round(INNER_AT_224 * min(height, width) / 224)
        if not 0 < inner < min(height, width):
            raise MethodNotApplicable(
                f"vp-expansive inner_size {inner} must be smaller than the {height}×{width} backbone input "
                "(e.g. inner_size=128 at 224; choose a smaller inner_size or a larger img_size)"
            )
        mean = torch.tensor(backbone.data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(backbone.data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        if mean.shape[1] != channels or std.shape[1] != channels:
            raise MethodNotApplicable(f"backbone mean/std do not have {channels} channels")
        top, left = (height - inner) // 2, (width - inner) // 2
        #: (left, right, top, bottom) zero padding around the inner image, as F.pad takes it
        self.padding = (left, width - inner - left, top, height - inner - top)
        self.inner = inner
        mask = torch.ones(1, height, width)
        mask[:, top : top + inner, left : left + inner] = 0
        device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
        self.register_buffer("mask", mask.to(device), persistent=False)
        self.register_buffer("mean", mean.to(device), persistent=False)
        self.register_buffer("std", std.to(device), persistent=False)
        self.theta = nn.Parameter(torch.zeros(channels, height, width, device=device))
        self.hook(backbone, "input", self.prompt_input)

    def prompt_input(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.dtype), self.std.to(x.dtype)
        pixels = x * std + mean
        if tuple(pixels.shape[-2:]) != (self.inner, self.inner):
            pixels = F.interpolate(
                pixels, size=(self.inner, self.inner), mode="bilinear", align_corners=False, antialias=True
            )
        pixels = F.pad(pixels, self.padding) + torch.sigmoid(self.theta) * self.mask
        return ((pixels - mean) / std).to(x.dtype)
