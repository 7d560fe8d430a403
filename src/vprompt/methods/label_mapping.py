"""Label mappings: read a task's classes off the backbone's own (source) classifier.

``flm``, ``ilm``, ``rlm``, ``first``, or ``linear`` (a new head); :class:`LabelMappedMethod` is the base
of the VP methods.
Design notes: ``docs/design.md``, section ``vprompt/methods/label_mapping.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..backbones import Backbone
from .base import Method, MethodConfig, MethodNotApplicable

Mapping = Literal["linear", "flm", "ilm", "rlm", "first"]
MAPPINGS: tuple[str, ...] = ("linear", "flm", "ilm", "rlm", "first")
#: mappings fitted from data (the others are fixed at attach)
FITTED: tuple[str, ...] = ("flm", "ilm")


def greedy_mapping(counts: torch.Tensor) -> torch.Tensor:
    """Assign each target class a distinct source class, most frequent pairs first.

    ``counts`` is ``[num_source, num_target]``. Repeatedly takes the largest remaining entry, maps its
    target (column) to its source (row), and removes both. Ties go to the lowest flat (row-major) index,
    i.e. the lowest source class, then the lowest target class. Returns a ``long`` tensor of
    ``num_target`` source indices.
    """
    if counts.dim() != 2:
        raise ValueError(f"counts must be [num_source, num_target], got shape {tuple(counts.shape)}")
    num_source, num_target = counts.shape
    if num_target > num_source:
        raise ValueError(f"cannot map {num_target} target classes onto {num_source} distinct source classes")
    remaining = counts.detach().to("cpu", torch.float64).clone()
    mapping = torch.empty(num_target, dtype=torch.long)
    for _ in range(num_target):
        flat = int(torch.argmax(remaining))  # first maximal value: the lowest flat index wins ties
        source, target = divmod(flat, num_target)
        mapping[target] = source
        remaining[source, :] = -torch.inf
        remaining[:, target] = -torch.inf
    return mapping


def count_pairs(model: nn.Module, loader: Iterable, num_source: int, num_target: int) -> torch.Tensor:
    """Count ``[source argmax × true target label]`` over ``loader`` (which yields ``(images, labels)``).

    The *source* logits are used: for a :class:`~vprompt.methods.TunedModel` that is its prompted
    backbone, not the label-mapped output. Runs in eval mode without gradients and restores the
    previous train/eval mode afterwards. Returns a ``long`` tensor ``[num_source, num_target]``.
    """
    source_model = getattr(model, "backbone", model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counts = torch.zeros(num_source * num_target, dtype=torch.long, device=device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in loader:
                images = batch[0].to(device, non_blocking=True)
                labels = batch[1].to(device, non_blocking=True).long()
                logits = source_model(images)
                if logits.shape[-1] != num_source:
                    raise ValueError(
                        f"the model gives {logits.shape[-1]} source logits, expected {num_source}"
                    )
                bad = labels[(labels < 0) | (labels >= num_target)]
                if bad.numel():
                    raise ValueError(f"label {int(bad[0])} out of range for {num_target} target classes")
                pairs = logits.argmax(dim=-1) * num_target + labels
                counts += torch.bincount(pairs, minlength=num_source * num_target)
    finally:
        model.train(was_training)
    return counts.view(num_source, num_target).cpu()


def random_mapping(num_source: int, num_target: int, seed: int) -> torch.Tensor:
    """``num_target`` distinct source classes drawn at random, reproducibly from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_source, generator=generator)[:num_target].clone()


@dataclass
class LabelMappingConfig(MethodConfig):
    """Options shared by the methods that can map onto the source classifier."""

    mapping: Mapping = field(
        default="linear",
        metadata={
            "help": "head: linear (a new linear head, trained) or a label mapping onto the source "
            "classifier: flm (frequency, fitted once), ilm (refitted every epoch), rlm (random), "
            "first (target k → source k)"
        },
    )
    num_classes: int = field(
        default=0, metadata={"help": "target classes (required with a label mapping: flm, ilm, rlm)"}
    )
    mapping_seed: int = field(default=0, metadata={"help": "seed of the random label mapping (rlm)"})
    mapping_interval: int = field(
        default=1, metadata={"help": "ilm: refit the mapping every N epochs (ILM-VP's --mapping-interval)"}
    )


class LabelMappedMethod(Method):
    """A method whose logits go through the config's head choice (linear head or label mapping).

    Subclasses call :meth:`attach_head` from :meth:`attach` and use a :class:`LabelMappingConfig`.
    """

    config: LabelMappingConfig

    def __init__(self, config: LabelMappingConfig | None = None):
        super().__init__(config)
        self._fitted = False
        self._num_source = 0

    @property
    def uses_mapping(self) -> bool:
        return self.config.mapping != "linear"

    @property
    def trains_head(self) -> bool:  # type: ignore[override]
        return not self.uses_mapping

    @property
    def num_target_classes(self) -> int | None:  # type: ignore[override]
        return self.config.num_classes if self.uses_mapping else None

    @classmethod
    def task_head(cls, config: LabelMappingConfig, num_classes: int) -> int | None:
        if config.mapping == "linear":
            return num_classes
        if not config.num_classes:
            config.num_classes = num_classes
        return None  # keep the source classifier and map onto it

    def attach_head(self, backbone: Backbone) -> None:
        """Check the backbone's classifier fits the head choice; set up the mapping buffer."""
        cfg = self.config
        if cfg.mapping not in MAPPINGS:
            raise MethodNotApplicable(
                f"unknown mapping {cfg.mapping!r}; choose one of: {', '.join(MAPPINGS)}"
            )
        self._fitted = False
        if cfg.mapping_interval < 1 or (cfg.mapping_interval != 1 and cfg.mapping != "ilm"):
            raise MethodNotApplicable(
                f"mapping_interval={cfg.mapping_interval}: it is the refitting interval of mapping 'ilm' "
                f"(at least 1); mapping {cfg.mapping!r} has none"
            )
        if not self.uses_mapping:
            if not backbone.new_head:
                raise MethodNotApplicable(
                    f"{self.name} with mapping='linear' trains a new linear head, but backbone "
                    f"{backbone.name!r} keeps its source classifier; build it with num_classes=<task classes>, "
                    "or use a label mapping (flm, ilm, rlm)"
                )
            if cfg.num_classes and cfg.num_classes != backbone.num_classes:
                raise MethodNotApplicable(
                    f"num_classes={cfg.num_classes} but the backbone's new head has {backbone.num_classes} "
                    "classes; with mapping='linear' the head's size is set when building the backbone"
                )
            return
        if backbone.new_head:
            raise MethodNotApplicable(
                f"mapping={cfg.mapping!r} maps onto the backbone's source classifier, but {backbone.name!r} "
                "has a new head; build the backbone with num_classes=None to keep the source classifier"
            )
        num_source = backbone.num_classes
        if num_source <= 0:
            raise MethodNotApplicable(
                f"mapping={cfg.mapping!r} needs the backbone's source classifier, but {backbone.name!r} has "
                "none; build the backbone with num_classes=None"
            )
        if not 0 < cfg.num_classes <= num_source:
            raise MethodNotApplicable(
                f"mapping={cfg.mapping!r} needs num_classes (the task's classes) between 1 and the "
                f"{num_source} source classes; got num_classes={cfg.num_classes}"
            )
        self._num_source = num_source
        device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
        if cfg.mapping == "rlm":
            mapping = random_mapping(num_source, cfg.num_classes, cfg.mapping_seed).to(device)
            self._fitted = True
        elif cfg.mapping == "first":
            mapping = torch.arange(cfg.num_classes, device=device)
            self._fitted = True
        else:  # -1: not fitted yet (a saved, fitted mapping loaded later is recognised by its values)
            mapping = torch.full((cfg.num_classes,), -1, dtype=torch.long, device=device)
        self.register_buffer("mapping", mapping, persistent=True)

    def fit_mapping(self, model: nn.Module, loader: Iterable) -> torch.Tensor:
        """Fit the frequency mapping on ``loader`` with ``model`` (the prompted model) and store it."""
        counts = count_pairs(model, loader, self._num_source, self.config.num_classes)
        mapping = greedy_mapping(counts)
        with torch.no_grad():
            self.mapping.copy_(mapping)
        self._fitted = True
        return counts

    def on_epoch_start(self, model: nn.Module, loader: Iterable, epoch: int) -> None:
        mapping, interval = self.config.mapping, self.config.mapping_interval
        refit = mapping == "ilm" and (epoch % interval == 0 or not self.is_fitted())
        if refit or (mapping == "flm" and (epoch == 0 or not self.is_fitted())):
            self.fit_mapping(model, loader)

    def is_fitted(self) -> bool:
        if not self.uses_mapping:
            return True
        if not self._fitted:  # a fitted state may have been loaded into the buffer since
            self._fitted = bool((self.mapping >= 0).all())
        return self._fitted

    def map_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.uses_mapping:
            return logits
        if not self.is_fitted():
            raise RuntimeError(
                f"{self.name}: the {self.config.mapping} label mapping is not fitted yet; call "
                "on_epoch_start(model, loader, epoch) / fit_mapping(model, loader) first (the training "
                "engine does this before each epoch)"
            )
        return logits[:, self.mapping]
