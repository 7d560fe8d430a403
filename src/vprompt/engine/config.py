"""The configuration of one training run: a dataclass whose fields carry their own help text.

The same fields are the ``vprompt train`` options (``--lr``), the keys of a YAML file (``lr: 0.01``)
and the keyword arguments of :func:`vprompt.train`. A method's own options (``site``, ``shape``,
``num_prompts`` ...) live in ``method_options``; in a YAML file they may also be written flat, next to
the run's options. :func:`check_config` checks everything a run needs before any work is done. Each
field names its section; only :mod:`.run` sees the whole config and hands each engine part its own
(``config.section(DataOptions)``; see docs/design.md, Option sections).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar, get_type_hints

import yaml

from .. import recipes
from ..data.transforms import Preprocess
from ..options import choices, coerce

S = TypeVar("S")


def _option(section: str, default: Any, help: str) -> Any:
    """A :class:`TrainConfig` field: its default, its help text and the section (engine part) it belongs to."""
    metadata = {"help": help, "section": section}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


#: the engine parts a run's options belong to: the model choice, the data, the optimisation, the loop
_model, _data, _optim, _loop = (partial(_option, s) for s in ("model", "data", "optim", "loop"))


@dataclass
class TrainConfig:
    """Every option of a run, flat (as the CLI, YAML files, recipes and ``config.yaml`` name them); each
    field belongs to one section, the frozen dataclass that the engine part reading it receives:
    :class:`ModelOptions`, :class:`DataOptions`, :class:`OptimOptions`, :class:`LoopOptions`."""

    backbone: str = _model("", "timm name, torchvision:<name>, offline:<name>, mae:<vit> or mocov3:<file>")
    img_size: int | None = _model(None, "square input size (default: the model's)")
    weights: str | None = _model(None, "local .safetensors/.pth/.npz weights file")
    random_init: bool = _model(False, "random backbone weights (quick checks only)")
    method: str = _model("", "adaptation method (see `vprompt methods`)")
    method_options: dict[str, Any] = _model({}, "the method's own options (see `vprompt methods --options`)")
    recipe: str | None = _model(
        None, "a named recipe (see `vprompt recipes`) giving defaults; explicit options win"
    )
    data: str = _data("", "dataset spec: vtab1k:<task>, hf:<name or folder>, fashion-mnist, ...")
    root: str | None = _data(None, "data root (see docs/guide.md, Data)")
    image_column: str | None = _data(None, "hf: data: the image column (default: the first Image feature)")
    label_column: str | None = _data(
        None, "hf: data: the label column (default: the first ClassLabel feature)"
    )
    images_outside_root: bool = _data(
        False, "accept split-list entries that point outside the dataset folder (refused by default)"
    )
    protocol: str | None = _data(None, "vtab, fgvc or vp (default: from the dataset family)")
    final: bool = _data(
        False, "final run: train on the protocol's final split and test once (default: tune on val)"
    )
    final_train: Literal["trainval", "train"] = _data(
        "trainval",
        "what a final run trains on: trainval (train + val) or train (the dataset's own training "
        "split alone, as the VPT code on FGVC and ILM-VP; for data that ships no val, from which vprompt "
        "holds val out, that is the whole training set)",
    )
    train_split: str | None = _data(None, "override the protocol's training split")
    val_split: str | None = _data(None, "override the validation split ('none' for no validation)")
    test_split: str | None = _data(None, "override the test split ('none' for no test)")
    train_size: int | None = _data(None, "train on a class-balanced subset of this many images")
    eval_size: int | None = _data(None, "validate and test on class-balanced subsets of this many images")
    preprocess: Preprocess = _data(
        "protocol",
        "protocol: the protocol's transforms; resize-crop: resize the shorter side to s·256/224, "
        "then centre-crop s, in training and evaluation (Bahng et al.; vtab and vp protocols)",
    )
    mean: list[float] | None = _model(
        None, "normalisation mean, one per channel (default: the backbone's), e.g. 0.485 0.456 0.406"
    )
    std: list[float] | None = _model(
        None, "normalisation std, one per channel (default: the backbone's), e.g. 0.229 0.224 0.225"
    )
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"] | None = _model(
        None, "resize interpolation (default: the backbone's)"
    )
    antialias: bool = _model(
        True,
        "resize with PIL, which antialiases when shrinking (default); --no-antialias: resize the "
        "0-255 values as floats without antialiasing, with half-pixel centres (bilinear: TensorFlow 2's "
        "tf.image.resize as the VPT code's VTAB pipeline; bilinear or bicubic only)",
    )
    epochs: int = _optim(10, "training epochs")
    batch_size: int = _optim(32, "global batch size (split across processes)")
    optimizer: Literal["sgd", "adam", "adamw"] = _optim("sgd", "sgd (momentum 0.9), adam or adamw")
    lr: float = _optim(0.01, "peak learning rate (before --lr-scale)")
    lr_scale: bool = _optim(False, "scale the learning rate by batch_size / 256 (VPT's rule)")
    weight_decay: float = _optim(0.0, "weight decay")
    warmup_epochs: float = _optim(0.0, "linear warm-up, in epochs, then cosine")
    min_lr: float = _optim(0.0, "learning rate at the end of the cosine")
    label_smoothing: float = _loop(0.0, "label smoothing of the cross-entropy")
    grad_clip: float | None = _loop(None, "clip the gradient norm to this")
    schedule: Literal["cosine", "multistep"] = _optim(
        "cosine", "after the warm-up: cosine to --min-lr, or multistep (× --lr-decay at each milestone)"
    )
    lr_milestones: list[float] | None = _optim(
        None,
        "multistep: decay points as fractions of the epochs (epoch int(f·epochs), as ILM-VP), e.g. 0.5 0.72",
    )
    lr_decay: float = _optim(0.1, "multistep: factor at each milestone")
    warmup_steps: int | None = _optim(
        None, "linear warm-up in optimisation steps (instead of --warmup-epochs)"
    )
    schedule_step: Literal["step", "epoch"] = _optim(
        "step",
        "update the learning rate every step, or once per epoch (as the VPT, VAPT and ILM-VP "
        "code: constant within an epoch)",
    )
    head_init: Literal["default", "vpt"] = _optim(
        "default",
        "default (the backbone's) or vpt: the VPT code base's head, Kaiming-normal fan-out "
        "weights and bias -log(99), and weight decay on every trainable tensor except the head's bias",
    )
    selection: Literal["final", "best-val"] = _loop(
        "final", "which weights are kept: the final epoch's, or the best on validation"
    )
    accumulate: int = _optim(
        1,
        "accumulate gradients over N batches per optimiser step: the same training as a batch N× "
        "larger (--lr-scale and the schedule count optimiser steps of N×batch-size images)",
    )
    ema: float | None = _loop(
        None,
        "keep an exponential moving average of the trained tensors with this decay (timm's "
        "ModelEmaV3, updated after every optimiser step, e.g. 0.999): the EMA weights are what is "
        "validated, selected, saved and tested",
    )
    early_stop: int | None = _loop(
        None,
        "stop after this many validations in a row without improving --early-stop-metric "
        "(needs a validation split; --selection decides which epoch's weights are kept)",
    )
    early_stop_metric: Literal["val_accuracy", "val_loss"] = _loop(
        "val_accuracy", "what --early-stop watches: val_accuracy or val_loss"
    )
    nonfinite: Literal["stop", "continue", "error"] = _loop(
        "stop",
        "a NaN/inf training loss: stop (the run ends at once, recorded as diverged: no adapter, "
        "no accuracy, never chosen by a sweep), continue (it trains its whole schedule anyway, recorded "
        "as diverged), error (NonFiniteLossError; the last good checkpoint is kept)",
    )
    augment: str = _data(
        "protocol",
        "training augmentation: protocol (the protocol's own), none (the evaluation transform), "
        "basic (timm's random-resized crop, h-flip, colour jitter 0.4), randaugment (basic with timm's "
        "rand-m9-mstd0.5-inc1-mmax9), trivialaugment (basic with timm's rand-n1-m9-mstd101-p1-inc1: one "
        "op of uniform magnitude), or a timm auto-augment string (rand-m9-mstd0.5, augmix-m5, original "
        "...) added to basic",
    )
    random_erasing: float = _data(
        0.0, "probability of timm's RandomErasing (one box of per-pixel noise) on a normalised training image"
    )
    mixup: float = _loop(0.0, "mixup alpha (timm's Mixup; 0: off), label smoothing folded in")
    cutmix: float = _loop(
        0.0, "cutmix alpha (timm's Mixup; 0: off); with --mixup, each batch picks one (p 0.5)"
    )
    mixup_prob: float = _loop(1.0, "probability that a batch is mixed when --mixup or --cutmix is on")
    seed: int = _loop(0, "seed of the method's init, the data order and dropout")
    device: str = _loop("auto", "auto (cuda when present), cpu, cuda, cuda:1")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _loop(
        "auto",
        "auto = bf16 autocast on a GPU that has it, else fp32; bf16 on a CPU: an opt-in, for "
        "CPUs with native bf16 (x86 AVX512-BF16 or AMX-BF16, Arm BF16)",
    )
    workers: int | None = _loop(
        None, "data processes (default: 8 on a GPU; CPU: 0 in memory, up to 4 for files)"
    )
    eval_every: int = _loop(1, "validate every N epochs (and after the last)")
    cache: Literal["auto", "off", "memory", "disk"] = _loop(
        "auto", "frozen-prefix cache: auto (in memory where valid), off, memory, disk (memory-mapped)"
    )
    cache_dtype: Literal["float32", "float16", "bfloat16"] = _loop(
        "float32", "dtype the cached activations are stored in"
    )
    progress: bool = _loop(
        True, "show a progress bar where stderr is a terminal (one line per epoch is printed either way)"
    )
    details: bool = _loop(
        False,
        "also write <run>/eval-<split>/ for the splits evaluated at the end: per-class accuracy, "
        "confusion matrix (CSV, PNG), each image's prediction (CSV)",
    )
    quiet: bool = _loop(False, "print nothing but errors: no progress bar, no per-epoch lines")
    log: Literal["csv", "tensorboard", "wandb"] = _loop(
        "csv",
        "where the run is tracked besides metrics.jsonl: csv (steps.csv), tensorboard "
        "(<run>/tensorboard/), wandb (offline unless WANDB_API_KEY is set and the network is up)",
    )

    def section(self, kind: type[S]) -> S:
        """This config's options of one section (e.g. ``config.section(DataOptions)``)."""
        return kind(**{f.name: getattr(self, f.name) for f in fields(kind)})


def _section(name: str, doc: str) -> type:
    """The frozen dataclass of the :class:`TrainConfig` fields of section ``name`` (same types, defaults, help)."""
    own = [f for f in fields(TrainConfig) if f.metadata["section"] == name]
    specs = [
        (f.name, f.type, field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
        for f in own
    ]
    kind = make_dataclass(f"{name.title()}Options", specs, frozen=True)
    kind.__module__, kind.__doc__ = __name__, doc
    return kind


ModelOptions = _section("model", "The model choice: backbone, method and input normalisation.")
DataOptions = _section("data", "What a run reads: dataset, splits, subsets, preprocessing and augmentation.")
OptimOptions = _section("optim", "The optimiser and its schedule over the epochs and batches.")
LoopOptions = _section(
    "loop", "The training loop: loss, selection, EMA, early stop, mixing, execution and output."
)


def val_choosers(loop: LoopOptions) -> tuple[str, ...]:
    """The options that choose on the validation split (the data part checks that there is one)."""
    uses = {"--selection best-val": loop.selection == "best-val", "--early-stop": loop.early_stop}
    return tuple(option for option, on in uses.items() if on not in (None, False))


def choices_of(option: str) -> tuple:
    """The values run option ``option`` allows, as its ``Literal`` annotation states them."""
    return choices(get_type_hints(TrainConfig)[option])


def config_fields() -> dict[str, Any]:
    """``name → dataclass field`` of :class:`TrainConfig`."""
    return {f.name: f for f in fields(TrainConfig)}


recipes.RUN_OPTIONS.update((k, v) for k, v in get_type_hints(TrainConfig).items() if k in config_fields())


def default_of(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict (an empty file is an empty config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return data


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a flat or nested dict; unknown keys become method options.

    Method options are checked against the method's own config when the run is resolved.
    """
    known = config_fields()
    values = typed(values)
    options = values.pop("method_options", {})
    for key in [k for k in values if k not in known]:
        options[key] = values.pop(key)
    config = TrainConfig(**values)
    config.method_options = options
    return config


def typed(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``-`` in keys read as ``_`` and each run option coerced to its type (unknown keys,
    method options written flat, are kept as they are)."""
    hints = get_type_hints(TrainConfig)
    values = {k.replace("-", "_"): v for k, v in values.items()}
    if values.get("method_options") is None:
        values["method_options"] = {}
    return {k: coerce(k, v, hints[k]) if k in hints else v for k, v in values.items()}


#: data processes per usable CPU core that ``--workers`` may ask for (more only thrash the machine)
WORKERS_PER_CPU = 4


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _finite(config: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")


def recipe_note(config: TrainConfig, message: str) -> str:
    """``message`` with, for each option it names whose value the config's recipe set, where the value
    comes from and how to override it."""
    if not config.recipe:
        return message
    try:
        wanted = recipes.load(config.recipe).values(config.method or None, config.data)
    except ValueError:
        return message
    sources = [(wanted.pop("method_options"), config.method_options), (wanted, to_dict(config))]
    named = [
        f"; {k} {v!r} comes from recipe {config.recipe}: override it with --{k.replace('_', '-')}"
        for recipe_values, used in sources
        for k, v in recipe_values.items()
        if k != "method" and used.get(k) == v and re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", message)
    ]
    return message + "".join(named)


def check_config(config: TrainConfig) -> None:
    """Clear errors for values no run can use (before anything is built); a value a recipe set is named
    as the recipe's."""
    try:
        _check_config(config)
    except ValueError as e:
        raise ValueError(recipe_note(config, str(e))) from None


def _check_config(config: TrainConfig) -> None:
    for name in ("backbone", "method", "data"):
        if not getattr(config, name):
            raise ValueError(f"--{name} is required")
    for name, hint in get_type_hints(TrainConfig).items():
        coerce(name, getattr(config, name), hint)  # a config built in Python: its values of their types
    positive = {"epochs": config.epochs, "batch_size": config.batch_size, "eval_every": config.eval_every}
    positive["accumulate"] = config.accumulate
    optional = ("train_size", "eval_size", "early_stop")
    positive |= {k: getattr(config, k) for k in optional if getattr(config, k) is not None}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    _finite(config, "lr", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "grad_clip")
    if config.lr <= 0:
        raise ValueError(f"lr must be positive, got {config.lr}")
    if config.weight_decay < 0 or config.warmup_epochs < 0 or not 0 <= config.label_smoothing < 1:
        raise ValueError("weight_decay and warmup_epochs must be >= 0, label_smoothing in [0, 1)")
    if config.min_lr < 0 or config.min_lr > config.lr:
        raise ValueError(f"min_lr must be in [0, lr] (the cosine decays from lr to it), got {config.min_lr}")
    if config.warmup_epochs > config.epochs:
        raise ValueError(
            f"warmup_epochs {config.warmup_epochs:g} is longer than the run (epochs {config.epochs})"
        )
    if config.grad_clip is not None and config.grad_clip <= 0:
        raise ValueError(
            f"grad_clip must be positive (the largest gradient norm kept), got {config.grad_clip}; "
            "leave it unset for no clipping"
        )
    if config.img_size is not None and config.img_size < 1:
        raise ValueError(f"img_size must be a positive number of pixels, got {config.img_size}")
    if config.workers is not None and config.workers < 0:
        raise ValueError(f"workers must be >= 0, got {config.workers}")
    bound = WORKERS_PER_CPU * usable_cpus()
    if config.workers is not None and config.workers > bound:
        raise ValueError(
            f"workers {config.workers} is more than {WORKERS_PER_CPU} × the {usable_cpus()} CPU cores this "
            f"process may use; give --workers {bound} or fewer"
        )
    check_schedule(config)
    check_regularisation(config)
    check_input(config)


def check_input(config: TrainConfig) -> None:
    """Normalisation and resize options that a transform can use."""
    from ..data.transforms import check_input_options

    check_input_options(config.mean, config.std, config.interpolation, config.antialias)


def check_regularisation(config: TrainConfig) -> None:
    """Augmentation, mixup, EMA and early-stopping options in range; none given where it does nothing."""
    from ..data.transforms import check_augment

    check_augment(config.augment)
    _finite(config, "random_erasing", "mixup", "cutmix", "mixup_prob", "ema")
    if config.mixup < 0 or config.cutmix < 0:
        raise ValueError(
            f"mixup and cutmix are Beta alphas, >= 0 (0: off), got {config.mixup}, {config.cutmix}"
        )
    for name in ("random_erasing", "mixup_prob"):
        if not 0 <= getattr(config, name) <= 1:
            raise ValueError(f"{name} is a probability, in [0, 1], got {getattr(config, name)}")
    if config.mixup_prob != 1 and not (config.mixup or config.cutmix):
        raise ValueError("mixup_prob is for --mixup / --cutmix, and neither is on")
    if config.ema is not None and not 0 < config.ema < 1:
        raise ValueError(f"ema is a decay in (0, 1), e.g. 0.999, got {config.ema}; leave it unset for none")
    if config.early_stop is None and config.early_stop_metric != "val_accuracy":
        raise ValueError("early_stop_metric is for --early-stop, which is not on")


def check_schedule(config: TrainConfig) -> None:
    """The schedule's options fit together: nothing given is silently ignored."""
    if config.schedule == "multistep":
        milestones = config.lr_milestones
        if not milestones:
            raise ValueError(
                "schedule 'multistep' needs lr_milestones (fractions of the epochs, e.g. 0.5 0.72)"
            )
        numbers = all(isinstance(f, int | float) and not isinstance(f, bool) for f in milestones)
        if not numbers or any(not 0 < f < 1 for f in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(f"lr_milestones must be increasing fractions in (0, 1), got {list(milestones)}")
        if not 0 < config.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {config.lr_decay}")
        if config.min_lr:
            raise ValueError("min_lr is the end of the cosine; schedule 'multistep' does not use it")
    else:
        if config.lr_milestones:
            raise ValueError("lr_milestones are for schedule 'multistep'; the cosine schedule has none")
        if config.lr_decay != 0.1:
            raise ValueError("lr_decay is for schedule 'multistep'; the cosine schedule does not use it")
    if config.warmup_steps is not None:
        if config.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {config.warmup_steps}")
        if config.warmup_epochs:
            raise ValueError("give the warm-up in epochs or in steps, not both")


def data_location(config: TrainConfig) -> dict[str, str | None]:
    """The run's ``data`` and ``root`` as paths that work from any working directory.

    ``root`` becomes absolute; so does a ``folder:<path>`` read relative to the working directory (one
    relative to ``root`` stays relative to the now absolute root). Runs record this in their config, and
    ``eval``, ``predict``, ``export`` and ``train --resume RUN`` read the data from there.
    """
    root = str(Path(config.root).expanduser().resolve()) if config.root else None
    from ..data import portable_spec

    return {"data": config.data if root else portable_spec(config.data), "root": root}


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)
