"""Input-level visual prompting (VP): a learned perturbation of the pixels, shared by all inputs.

``vp-pad`` (Bahng et al., 2022) and ``vp-expansive`` (ILM-VP, Chen et al., CVPR 2023), at the ``input`` site.
Design notes: ``docs/design.md``, section ``vprompt/methods/vp.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from .base import MethodNotApplicable, check_size, register_method
from .label_mapping import LabelMappedMethod, LabelMappingConfig

#: vp-pad's border width at a 224-px input (Bahng et al.); scaled with the input size
PAD_WIDTH_AT_224 = 30
#: vp-expansive's inner image side at a 224-px input (ILM-VP); scaled with the input size
INNER_AT_224 = 128
#: datasets whose images are this small or smaller are fed at their own size (ILM-VP: CIFAR, SVHN, GTSRB at 32)
SMALL_IMAGES = 32
#: how the data pipeline resizes images to the inner size: ILM-VP's ``transforms.Resize`` default
INNER_INTERPOLATION = "bilinear"


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
            "help": "side the image is resized to (once, by the data pipeline) before padding (default, as "
            "ILM-VP: a small dataset's own size, 32 for CIFAR/SVHN/GTSRB; else 128 at 224, scaled with the "
            "input size)"
        },
    )


@register_method(order=50)
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
        side = min(height, width)
        check_size(
            self, "width", w, (side - 1) // 2, f"two borders must leave pixels of the {height}×{width} input"
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


@register_method(order=60)
class ExpansivePrompt(LabelMappedMethod):
    """ILM-VP's expansive prompt: shrink, pad, add ``sigmoid(θ)`` on the border, then normalise."""

    name = "vp-expansive"
    summary = "visual prompt (ILM-VP): image shrunk and padded, a learned sigmoid border, then normalised"
    families = "all"
    config_class = ExpansiveConfig
    config: ExpansiveConfig

    @classmethod
    def for_data(cls, config: ExpansiveConfig, info) -> None:
        """A dataset of small images (``info.image_size`` ≤ 32) is fed at its own size, as ILM-VP."""
        size = getattr(info, "image_size", None)
        if config.inner_size is None and size is not None and size <= SMALL_IMAGES:
            config.inner_size = size

    def inner_size(self, backbone: Backbone) -> int:
        _, height, width = backbone.input_size
        inner = self.config.inner_size
        return round(INNER_AT_224 * min(height, width) / 224) if inner is None else inner

    def data_config(self, backbone: Backbone) -> dict:
        """The backbone's data config at the inner size: the image is resized once, straight to it."""
        inner = self.inner_size(backbone)
        channels = backbone.input_size[0]
        return {
            **backbone.data_config,
            "input_size": (channels, inner, inner),
            "interpolation": INNER_INTERPOLATION,
        }

    def attach(self, backbone: Backbone) -> None:
        self.attach_head(backbone)
        channels, height, width = backbone.input_size
        inner = self.inner_size(backbone)
        bound = f"smaller than the {height}×{width} backbone input, e.g. 128 at 224; or use a larger img_size"
        check_size(self, "inner_size", inner, min(height, width) - 1, bound)
        mean = torch.tensor(backbone.data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(backbone.data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        if mean.shape[1] != channels or std.shape[1] != channels:
            raise MethodNotApplicable(f"backbone mean/std do not have {channels} channels")
        # ILM-VP: left/top padding int((out - in + 1) / 2), right/bottom int((out - in) / 2)
        top, left = (height - inner + 1) // 2, (width - inner + 1) // 2
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
        # the data pipeline delivers the inner size; other inputs (e.g. at the backbone's size) are shrunk
        if tuple(pixels.shape[-2:]) != (self.inner, self.inner):
            pixels = F.interpolate(
                pixels, size=(self.inner, self.inner), mode="bilinear", align_corners=False, antialias=True
            )
        pixels = F.pad(pixels, self.padding) + torch.sigmoid(self.theta) * self.mask
        return ((pixels - mean) / std).to(x.dtype)
