"""Protocol presets: which splits a run tunes and reports on, and the image transforms.

Mean, std, input size and interpolation always come from the model's data config.
Design notes: ``docs/design.md``, section ``vprompt/data/transforms.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _config(data_config: dict) -> tuple[tuple[int, int], tuple, tuple, T.InterpolationMode]:
    missing = [k for k in ("input_size", "mean", "std") if k not in data_config]
    if missing:
        raise ValueError(f"data config lacks {', '.join(missing)} (expected a timm-style data config dict)")
    size = tuple(int(v) for v in data_config["input_size"][-2:])
    interp = str(data_config.get("interpolation", "bilinear")).lower()
    if interp not in _INTERPOLATION:
        raise ValueError(f"data config interpolation {interp!r} not supported")
    return size, tuple(data_config["mean"]), tuple(data_config["std"]), _INTERPOLATION[interp]


PREPROCESSES = ("protocol", "resize-crop")


def build_transform(
    data_config: dict, protocol: str = "vp", train: bool = False, preprocess: str = "protocol"
) -> T.Compose:
    """The image transform for ``protocol`` (training or evaluation), normalised with the backbone's mean/std."""
    proto = get_protocol(protocol)
    if preprocess not in PREPROCESSES:
        raise ValueError(f"unknown preprocess {preprocess!r}; choose one of: {', '.join(PREPROCESSES)}")
    if preprocess == "resize-crop" and proto.train_augments:
        raise ValueError(
            f"preprocess 'resize-crop' replaces a plain resize; protocol {proto.name!r} has its own crops"
        )
    (h, w), mean, std, interp = _config(data_config)
    steps: list = [ToRGB()]
    if preprocess == "resize-crop":
        steps += [T.Resize(round(min(h, w) * 256 / 224), interpolation=interp), T.CenterCrop((h, w))]
    elif proto.name == "fgvc":
        resize = round(min(h, w) * 256 / 224)  # shorter side, as VPT's Resize(256) for 224 inputs
        if train:
            steps += [
                T.Resize(resize, interpolation=interp),
                T.RandomCrop((h, w)),
                T.RandomHorizontalFlip(),
            ]
        else:
            steps += [T.Resize(resize, interpolation=interp), T.CenterCrop((h, w))]
    else:
        steps.append(T.Resize((h, w), interpolation=interp))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
