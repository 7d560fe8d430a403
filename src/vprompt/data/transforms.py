"""Protocol presets: which splits a run tunes and reports on, and the image transforms.

Mean, std, input size, interpolation and antialiasing come from the model's data config (a run's
``--mean``/``--std``/``--interpolation``/``--antialias`` are written into it, see :func:`input_overrides`).
Design notes: ``docs/design.md``, section ``vprompt/data/transforms.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from .datasets import ToRGB


@dataclass(frozen=True)
class Protocol:
    """A protocol preset. Split names are the logical ones ``load`` accepts (``train/val/trainval/test``)."""

    name: str
    tune: tuple[str, str]
    final: tuple[str, str]
    train_augments: bool  # whether the training transform is random
    description: str

    @property
    def train_deterministic(self) -> bool:
        """True when the training transform gives the same tensor every epoch (a frozen-prefix cache is valid)."""
        return not self.train_augments

    def splits(self, final: bool = False) -> tuple[str, str]:
        """``(train split, evaluation split)`` for a tuning run (default) or the final run."""
        return self.final if final else self.tune


PROTOCOLS: dict[str, Protocol] = {
    "vtab": Protocol(
        "vtab", ("train", "val"), ("trainval", "test"), False, "resize to input size, no augmentation"
    ),
    "fgvc": Protocol(
        "fgvc",
        ("train", "val"),
        ("trainval", "test"),
        True,
        "train: resize s*256/224, random crop s, h-flip; eval: resize, centre crop",
    ),
    "vp": Protocol(
        "vp", ("train", "val"), ("trainval", "test"), False, "resize to input size, no augmentation"
    ),
}

_FAMILY_PROTOCOL = {"vtab1k": "vtab", "fgvc": "fgvc"}

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
    "lanczos": T.InterpolationMode.LANCZOS,
    "box": T.InterpolationMode.BOX,
    "hamming": T.InterpolationMode.HAMMING,
}


def get_protocol(name: str) -> Protocol:
    """The preset called ``name`` (``vtab``, ``fgvc`` or ``vp``)."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None


def default_protocol(spec: str) -> str:
    """The protocol a dataset spec uses unless told otherwise: vtab1k→vtab, fgvc→fgvc, all others→vp."""
    return _FAMILY_PROTOCOL.get(spec.split(":", 1)[0].strip().lower(), "vp")


def is_train_deterministic(protocol: str) -> bool:
    """Whether ``protocol``'s training transform is deterministic (needed before caching frozen features)."""
    return get_protocol(protocol).train_deterministic


#: ``augment`` names and the timm auto-augment policy each adds to timm's training transform: DeiT's
#: RandAugment, and TrivialAugment as timm's RandAugment can say it (one op, always, uniform magnitude).
#: Magnitudes stay at most 9: at timm's 10, PosterizeIncreasing keeps 0 bits, which Pillow >= 11 refuses.
AUGMENTS = {
    "basic": None,
    "randaugment": "rand-m9-mstd0.5-inc1-mmax9",
    "trivialaugment": "rand-n1-m9-mstd101-p1-inc1",
}
#: ``augment`` values that keep a transform of the protocol (its own training one, or its evaluation one)
PROTOCOL_AUGMENTS = ("protocol", "none")


def check_augment(augment: str) -> None:
    """A clear error unless ``augment`` is a name vprompt knows or a timm auto-augment string."""
    if augment in PROTOCOL_AUGMENTS or augment in AUGMENTS:
        return
    try:
        create_transform(32, is_training=True, auto_augment=augment)
    except Exception:  # timm rejects a bad policy string with an assertion or a KeyError
        names = ", ".join([*PROTOCOL_AUGMENTS, *AUGMENTS])
        raise ValueError(
            f"unknown augment {augment!r}; choose one of: {names}, or a timm auto-augment string "
            "(e.g. rand-m9-mstd0.5, augmix-m5, original, v0)"
        ) from None


def train_randomness(protocol: str, augment: str = "protocol", random_erasing: float = 0.0) -> str | None:
    """Why the training transform is random (a frozen-prefix cache would then hold stale features), or
    None where it gives the same tensor every epoch."""
    reasons = []
    if augment == "protocol" and get_protocol(protocol).train_augments:
        reasons.append(f"protocol {protocol!r} augments training images randomly")
    elif augment not in PROTOCOL_AUGMENTS:
        reasons.append(f"--augment {augment} transforms training images randomly")
    if random_erasing:
        reasons.append(f"--random-erasing {random_erasing:g} erases random patches of training images")
    return " and ".join(reasons) or None


def _config(data_config: dict) -> tuple[tuple[int, int], tuple, tuple, T.InterpolationMode]:
    missing = [k for k in ("input_size", "mean", "std") if k not in data_config]
    if missing:
        raise ValueError(f"data config lacks {', '.join(missing)} (expected a timm-style data config dict)")
    size = tuple(int(v) for v in data_config["input_size"][-2:])
    interp = str(data_config.get("interpolation", "bilinear")).lower()
    if interp not in _INTERPOLATION:
        raise ValueError(f"data config interpolation {interp!r} not supported")
    return size, tuple(data_config["mean"]), tuple(data_config["std"]), _INTERPOLATION[interp]


#: interpolations a resize without antialiasing offers (PyTorch's, half-pixel centres)
NO_ANTIALIAS_MODES = ("bilinear", "bicubic")


def check_input_options(
    mean: list[float] | None, std: list[float] | None, interpolation: str | None, antialias: bool
) -> None:
    """Clear errors for a normalisation or resize no transform can use."""
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and (not values or not all(math.isfinite(v) for v in values)):
            raise ValueError(f"{name} must be finite numbers, one per image channel, got {values}")
    if std is not None and any(v <= 0 for v in std):
        raise ValueError(f"std must be positive (images are divided by it), got {std}")
    if mean is not None and std is not None and len(mean) != len(std):
        raise ValueError(f"mean and std need one value per channel each, got {len(mean)} and {len(std)}")
    if interpolation is not None and interpolation not in _INTERPOLATION:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; choose one of: {', '.join(_INTERPOLATION)}"
        )
    if not antialias and interpolation is not None and interpolation not in NO_ANTIALIAS_MODES:
        raise ValueError(
            f"--no-antialias resizes with {' or '.join(NO_ANTIALIAS_MODES)}; interpolation {interpolation!r} "
            "is PIL's only (leave --antialias on)"
        )


def input_overrides(
    mean: list[float] | None = None,
    std: list[float] | None = None,
    interpolation: str | None = None,
    antialias: bool = True,
) -> dict:
    """The data-config keys a run's normalisation and resize options replace (only those given)."""
    check_input_options(mean, std, interpolation, antialias)
    given = {"mean": mean, "std": std, "interpolation": interpolation}
    out = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items() if v is not None}
    return out if antialias else {**out, "antialias": False}


class ResizeNoAntialias:
    """A PIL image resized as floats without antialiasing (half-pixel centres, PyTorch's
    ``interpolate(..., align_corners=False, antialias=False)``): a ``(C, H, W)`` float tensor in [0, 1].

    The 0-255 values are resized and then divided by 255, never rounded in between: for ``bilinear`` this is
    TensorFlow 2's ``tf.image.resize(image, size, "bilinear", antialias=False)`` followed by ``/ 255``, as the
    VPT code prepares VTAB images. ``size``: ``(h, w)``, or an int for the shorter side (as ``T.Resize``).
    """

    def __init__(self, size: int | tuple[int, int], interpolation: str = "bilinear"):
        if interpolation not in NO_ANTIALIAS_MODES:
            raise ValueError(
                f"a resize without antialiasing is {' or '.join(NO_ANTIALIAS_MODES)}, not {interpolation!r}"
            )
        self.size, self.interpolation = size, interpolation

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if not isinstance(self.size, int):
            return tuple(self.size)
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = self.size, int(self.size * long / short)  # as torchvision's Resize
        return (new_short, new_long) if h <= w else (new_long, new_short)

    def __call__(self, image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, dtype=np.float32))
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        x = pixels.permute(2, 0, 1)[None]
        size = self.output_size(*x.shape[-2:])
        out = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=False)
        return out[0] / 255.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, interpolation={self.interpolation}, antialias=False)"


#: how images are sized before the protocol's transform (a run's ``preprocess`` option)
Preprocess = Literal["protocol", "resize-crop"]


def build_transform(
    data_config: dict,
    protocol: str = "vp",
    train: bool = False,
    preprocess: str = "protocol",
    augment: str = "protocol",
    random_erasing: float = 0.0,
) -> T.Compose:
    """The image transform for ``protocol`` (training or evaluation), normalised with the backbone's
    mean/std; a training transform as ``augment`` and ``random_erasing`` say."""
    proto = get_protocol(protocol)
    if preprocess not in get_args(Preprocess):
        raise ValueError(
            f"unknown preprocess {preprocess!r}; choose one of: {', '.join(get_args(Preprocess))}"
        )
    if preprocess == "resize-crop" and proto.train_augments:
        raise ValueError(
            f"preprocess 'resize-crop' replaces a plain resize; protocol {proto.name!r} has its own crops"
        )
    check_augment(augment)
    (h, w), mean, std, interp = _config(data_config)
    antialias = data_config.get("antialias", True)
    timm_augments = train and augment not in PROTOCOL_AUGMENTS
    if not antialias and (timm_augments or interp.value not in NO_ANTIALIAS_MODES):
        why = f"--augment {augment} (timm's resize)" if timm_augments else f"interpolation {interp.value!r}"
        raise ValueError(
            f"--no-antialias resizes with {' or '.join(NO_ANTIALIAS_MODES)} in the protocol's transforms; "
            f"{why} is not one of those: leave --antialias on or change it"
        )

    def resize(size):
        return (
            ResizeNoAntialias(size, interp.value) if not antialias else T.Resize(size, interpolation=interp)
        )

    steps: list = [ToRGB()]
    if timm_augments:  # timm's: crop, flip, policy, to tensor, normalise
        policy = AUGMENTS.get(augment, augment)
        kwargs = dict(auto_augment=policy, interpolation=interp.value, mean=mean, std=std)
        steps += create_transform((3, h, w), is_training=True, **kwargs).transforms
    else:
        if preprocess == "resize-crop":
            steps += [resize(round(min(h, w) * 256 / 224)), T.CenterCrop((h, w))]
        elif proto.name == "fgvc":
            steps.append(resize(round(min(h, w) * 256 / 224)))  # shorter side, as VPT's Resize(256) at 224
            random = train and augment == "protocol"
            steps += [T.RandomCrop((h, w)), T.RandomHorizontalFlip()] if random else [T.CenterCrop((h, w))]
        else:
            steps.append(resize((h, w)))
        steps += ([T.ToTensor()] if antialias else []) + [T.Normalize(mean, std)]
    if train and random_erasing:
        steps.append(RandomErasing(random_erasing, mode="pixel", device="cpu"))  # timm train.py's mode
    return T.Compose(steps)
