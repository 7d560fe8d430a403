"""The method interface: what every adaptation method (AP, VPT, LoRA, ...) provides.

A method is an ``nn.Module`` holding its own trainable modules. ``attach`` builds them for a given
backbone (shapes come from the backbone's sites) and connects them through ``Site.hook`` or, for
LoRA-style methods, by wrapping modules; ``detach`` undoes exactly that. Which backbone parameters it
unfreezes is said by ``backbone_parameters``. Everything else (freezing, the head, counting, saving)
is done once, by :class:`vprompt.model.TunedModel`; a method with a peft equivalent says how its files map
to peft's (``peft_type`` and the ``peft_*`` hooks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..backbones import Backbone
from ..registry import Registry


class MethodNotApplicable(ValueError):
    """The method cannot be attached to this backbone (wrong family, site or option)."""


@dataclass
class MethodConfig:
    """Base of every method's options. Subclasses add fields with ``metadata={"help": ...}``."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Method(nn.Module):
    """Base class of all methods. Subclasses set the class attributes and override what they need."""

    #: CLI / registry name, e.g. ``"ap"``
    name: ClassVar[str]
    #: one line for ``vprompt methods``
    summary: ClassVar[str]
    #: which families it supports, in words, for ``vprompt methods``
    families: ClassVar[str] = "all"
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | None = None):
        super().__init__()
        self.config = config if config is not None else self.config_class()
        self._handles: list[RemovableHandle] = []

    # ------------------------------------------------------------------ what subclasses override

    def attach(self, backbone: Backbone) -> None:
        """Build the method's modules for ``backbone`` and connect them (hooks or module wrapping).

        Raise :class:`MethodNotApplicable` with the reason when the backbone does not fit.
        """

    def detach(self, backbone: Backbone) -> None:
        """Undo :meth:`attach` so the backbone is exactly as before. Hooks are removed here."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    #: the baseline the tools measure the others against (bench's ``step_vs_linear``, the report's
    #: reference line): the linear probe
    reference: ClassVar[bool] = False

    #: whether :meth:`merge` can fold what was trained into the backbone's own weights
    can_merge: ClassVar[bool] = False

    def merge(self, backbone: Backbone) -> None:
        """Fold the trained state into the backbone's weights and detach (``merge_and_unload``)."""
        raise MethodNotApplicable(
            f"{self.name} adds its own modules to the forward pass, which cannot be folded into the "
            "backbone's weights; detach() removes them, save_pretrained() keeps them"
        )

    def backbone_parameters(self, backbone: Backbone) -> Iterable[nn.Parameter]:
        """Parameters *inside the backbone* this method trains (norm affine, biases, LoRA, ...)."""
        return ()

    def first_site(self, backbone: Backbone) -> str:
        """The earliest site whose raw activation does not depend on anything trained: a frozen-prefix
        cache may hold the activations there. The engine verifies the claim before using a cache."""
        return "input"

    #: whether the backbone's classifier is trained (False when logits go through a label mapping)
    trains_head: bool = True
    #: task classes when a label mapping picks them from the source classifier, else None
    num_target_classes: int | None = None

    @classmethod
    def task_head(cls, config: MethodConfig, num_classes: int) -> int | None:
        """The ``num_classes`` to build the backbone with for a task of ``num_classes`` classes.

        A new linear head by default; ``None`` keeps the source classifier (label mappings), in which
        case the method may fill its own task-size option in ``config``.
        """
        return num_classes

    @classmethod
    def for_data(cls, config: MethodConfig, info: Any) -> None:
        """Fill options whose defaults depend on the dataset (``info``: its :class:`DatasetInfo`)."""

    def data_config(self, backbone: Backbone) -> dict[str, Any]:
        """What the data pipeline must deliver to this model: a timm-style data config (input size, mean,
        std, interpolation). The backbone's by default; a method that needs its images at another size
        (ILM-VP's inner image) says so here, and the transforms are derived from it."""
        return backbone.data_config

    def map_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Map the backbone's logits to the task's classes (identity, or a label mapping)."""
        return logits

    def on_epoch_start(self, model: nn.Module, loader: Iterable, epoch: int) -> None:
        """Called by the engine before each training epoch (label mappings are fitted here)."""

    # --------------------------------------- peft's format (used by vprompt.model.peft_format)

    #: peft's ``peft_type`` of the same method: then ``save_pretrained`` also writes peft's files and
    #: ``load_adapter`` reads them, through the four ``peft_*`` hooks below; ``None``: vprompt's files only
    peft_type: ClassVar[str | None] = None

    def peft_config(self, backbone: Backbone) -> dict[str, Any]:
        """peft's ``adapter_config.json`` for this method as attached to ``backbone``."""
        raise NotImplementedError(f"{self.name} has no peft format")

    def peft_key(self, key: str) -> str:
        """A trained tensor's name inside the timm model → its name in peft's adapter file."""
        return key

    @classmethod
    def from_peft_config(cls, config: dict[str, Any], backbone: Backbone, path: Path) -> MethodConfig:
        """This method's options from peft's ``adapter_config.json`` (read from ``path``) for ``backbone``;
        a ValueError naming ``path`` when vprompt's method cannot do what the file asks."""
        raise NotImplementedError(f"{cls.name} has no peft format")

    @classmethod
    def from_peft_key(cls, key: str) -> str:
        """A tensor's name in peft's adapter file → its name inside the timm model (:meth:`peft_key` undone)."""
        return key

    # ------------------------------------------------------------------------------- helpers

    def hook(self, backbone: Backbone, site: str, fn) -> None:
        """Hook ``fn`` at ``site``; the handle is removed by :meth:`detach`."""
        self._handles.append(backbone.site(site).hook(fn))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())


#: name → method class, in the order ``vprompt methods`` lists them; filled by :func:`register_method`
METHODS: Registry[type[Method]] = Registry("method")


def register_method(*, order: float):
    """Class decorator: make a :class:`Method` subclass available under its ``name``; ``order`` is its
    place in ``vprompt methods`` (lower first)."""

    def wrap(cls: type[Method]) -> type[Method]:
        METHODS.add(cls.name, cls, order)
        return cls

    return wrap


#: hidden sizes and prompt counts may be at most this many times what they apply to (a transformer MLP's
#: width ratio): beyond it the method's part costs more than the backbone part it adapts
SIZE_FACTOR = 4


def check_size(method: Method, option: str, value: int, high: int, bound: str, low: int = 1) -> None:
    """Refuse a size-like option outside ``[low, high]`` when the method is attached: one line naming the
    option, the value and the bound (``bound`` says where ``high`` comes from)."""
    if not low <= value <= high:
        raise MethodNotApplicable(
            f"{method.name} {option}={value} is out of range: it must be from {low} to {high} ({bound})"
        )


def require_tokens(method: Method, backbone: Backbone) -> None:
    """Token-prompt methods need a plain ViT token sequence (CLS/register prefix + patch grid)."""
    if not backbone.family.has_tokens:
        raise MethodNotApplicable(
            f"{method.name} inserts prompt tokens into a plain ViT token sequence; backbone "
            f"{backbone.name!r} is of family {backbone.family.name!r}, which has none"
        )
