"""Protocol presets: which splits a run tunes and reports on, and the image transforms.

Mean, std, input size and interpolation always come from the model's data config.
Design notes: ``docs/design.md``, section ``vprompt/data/transforms.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

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


PREPROCESSES = ("protocol", "resize-crop")


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
    if preprocess not in PREPROCESSES:
        raise ValueError(f"unknown preprocess {preprocess!r}; choose one of: {', '.join(PREPROCESSES)}")
    if preprocess == "resize-crop" and proto.train_augments:
        raise ValueError(
            f"preprocess 'resize-crop' replaces a plain resize; protocol {proto.name!r} has its own crops"
        )
    check_augment(augment)
    (h, w), mean, std, interp = _config(data_config)
    steps: list = [ToRGB()]
    if train and augment not in PROTOCOL_AUGMENTS:  # timm's: crop, flip, policy, to tensor, normalise
        policy = AUGMENTS.get(augment, augment)
        kwargs = dict(auto_augment=policy, interpolation=interp.value, mean=mean, std=std)
        steps += create_transform((3, h, w), is_training=True, **kwargs).transforms
    else:
        if preprocess == "resize-crop":
            steps += [T.Resize(round(min(h, w) * 256 / 224), interpolation=interp), T.CenterCrop((h, w))]
        elif proto.name == "fgvc":
            resize = round(min(h, w) * 256 / 224)  # shorter side, as VPT's Resize(256) for 224 inputs
            steps.append(T.Resize(resize, interpolation=interp))
            random = train and augment == "protocol"
            steps += [T.RandomCrop((h, w)), T.RandomHorizontalFlip()] if random else [T.CenterCrop((h, w))]
        else:
            steps.append(T.Resize((h, w), interpolation=interp))
        steps += [T.ToTensor(), T.Normalize(mean, std)]
    if train and random_erasing:
        steps.append(RandomErasing(random_erasing, mode="pixel", device="cpu"))  # timm train.py's mode
    return T.Compose(steps)
