"""A backbone with one method attached: freezing, the head, counting, train/eval, save and load;
:func:`attach` and :func:`load_adapter` build one."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from ..backbones import Backbone
from ..files import ensure_dir, write_bytes, write_text
from ..methods import METHODS, Method, method_config
from .hub import local_folder, push_folder
from .peft_format import is_peft_folder, read_peft_config, read_peft_weights, save_peft
from .saved import (
    CONFIG_FILE,
    FORMAT_VERSION,
    RUN_ADAPTER,
    RUN_CONFIG,
    WEIGHTS_FILE,
    check_backbone_matches,
    has_config,
    read_config,
    read_weights,
    rebuild_backbone,
)


class TunedModel(nn.Module):
    """``backbone`` frozen except what ``method`` trains (plus the head, unless label-mapped).

    The backbone always stays in eval mode (no dropout or drop-path, BatchNorm statistics frozen);
    only the method's own modules follow :meth:`train` / :meth:`eval`.

    ``class_names`` (one per output, ``None`` when unknown) and ``preprocessing`` (how images were
    prepared in training: ``{"protocol": ..., "preprocess": ...}``) travel with :meth:`save_pretrained`.
    """

    def __init__(self, backbone: Backbone, method: Method):
        super().__init__()
        self.backbone = backbone
        self.method = method
        self._class_names: list[str] | None = None
        self.preprocessing: dict[str, str] | None = None
        self._requires_grad = {n: p.requires_grad for n, p in backbone.named_parameters()}
        for p in backbone.parameters():
            p.requires_grad_(False)
        try:
            method.attach(backbone)
        except Exception:
            method.detach(backbone)
            self._restore_flags()
            raise
        for p in method.backbone_parameters(backbone):
            p.requires_grad_(True)
        for p in backbone.head.parameters():
            p.requires_grad_(method.trains_head)
        self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.map_logits(self.backbone(x))

    def forward_from(self, site: str, activation: torch.Tensor) -> torch.Tensor:
        """The output for a raw activation at ``site`` (see :meth:`Backbone.forward_from`)."""
        return self.method.map_logits(self.backbone.forward_from(site, activation))

    @property
    def data_config(self) -> dict[str, Any]:
        """The data config the inputs must follow (the backbone's unless the method asks otherwise)."""
        return self.method.data_config(self.backbone)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The ``(C, H, W)`` of the images this model takes (see :attr:`data_config`)."""
        return tuple(self.data_config["input_size"])

    def site_shape(self, name: str) -> tuple[int, ...]:
        """The activation shape at site ``name`` (without batch) for this model's inputs."""
        return self.input_size if name == "input" else self.backbone.site(name).shape

    @property
    def class_names(self) -> list[str] | None:
        """The name of each output class (index → name), or ``None`` when the model was given none."""
        return self._class_names

    @class_names.setter
    def class_names(self, names) -> None:
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise ValueError("class names must be a list of strings, one per class")
            if len(names) != self.num_classes:
                raise ValueError(f"{len(names)} class names for a model of {self.num_classes} classes")
            names = list(names)
        self._class_names = names

    @property
    def id2label(self) -> dict[int, str] | None:
        """``{index: class name}``, as Hugging Face calls it (``None`` without class names)."""
        return None if self._class_names is None else dict(enumerate(self._class_names))

    # ------------------------------------------------------- timm's verbs, with the method attached

    def forward_features(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """timm's ``forward_features`` of the adapted backbone (prompt tokens removed, unless the head
        pools them: ``pool_prompts``)."""
        return self._timm_verb("forward_features")(x, **kwargs)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's ``forward_head``; the logits go through the method's label mapping, if any."""
        out = self._timm_verb("forward_head")(x, pre_logits=pre_logits)
        return out if pre_logits else self.method.map_logits(out)

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        """timm's ``forward_intermediates`` (prompt tokens removed from every intermediate)."""
        return self._timm_verb("forward_intermediates")(x, *args, **kwargs)

    def _timm_verb(self, name: str):
        fn = getattr(self.backbone.model, name, None)
        if fn is None:
            raise AttributeError(
                f"backbone {self.backbone.name!r} ({type(self.backbone.model).__name__}) has no {name}; "
                "it is a timm model verb"
            )
        return fn

    def train(self, mode: bool = True) -> TunedModel:
        self.training = mode
        self.backbone.eval()
        self.method.train(mode)
        return self

    # --------------------------------------------------------------------------------- counting

    def trainable_parameters(self, head: bool = True) -> int:
        """Number of trained parameters, with or without the classifier head."""
        total = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if not head:
            total -= sum(p.numel() for p in self.backbone.head.parameters() if p.requires_grad)
        return total

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameters(), self.total_parameters()
        print(
            f"trainable: {trainable:,} ({self.trainable_parameters(head=False):,} without the head) "
            f"of {total:,} ({100 * trainable / total:.4f}%)"
        )

    # ---------------------------------------------------------------------------------- unloading

    def unload(self) -> Backbone:
        """Remove the method and return the backbone exactly as it was (structure and grad flags), as
        peft's ``unload``."""
        self.method.detach(self.backbone)
        self._restore_flags()
        return self.backbone

    def detach(self) -> Backbone:
        """Deprecated: :meth:`unload` (peft's name); ``detach`` goes in the next release."""
        warnings.warn(
            "TunedModel.detach() is now unload() (peft's name); detach() goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.unload()

    def merge_and_unload(self) -> Backbone:
        """Fold the trained weights into the backbone and return it without the method (as peft's).

        For ``lora`` each target becomes ``W + (alpha / r) · B A``; for the methods that train the
        backbone's own parameters (``linear``, ``full``, ``norm``, ``bitfit``) it equals :meth:`unload`.
        Methods with their own modules (prompts, adapters) raise ``MethodNotApplicable``.
        """
        self.method.merge(self.backbone)
        self._restore_flags()
        return self.backbone

    def _restore_flags(self) -> None:
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, True))

    # ------------------------------------------------------------------------------ persistence

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: trained parameters plus the method's own buffers."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        state.update(self._method_buffers())
        return {k: v.contiguous().clone() for k, v in state.items()}

    def config_dict(self) -> dict[str, Any]:
        bb = self.backbone
        return {
            "format": FORMAT_VERSION,
            "method": self.method.name,
            "options": self.method.config.to_dict(),
            "backbone": {
                "name": bb.name,
                "img_size": bb.input_size[-1],
                "num_classes": bb.num_classes,
                "new_head": bb.new_head,
                "family": bb.family.name,
                "weights": bb.source,
                "build_args": bb.build_args,
            },
            "trainable_parameters": self.trainable_parameters(),
            "trainable_parameters_without_head": self.trainable_parameters(head=False),
            **({} if self.class_names is None else {"class_names": self.class_names}),
            **({} if self.id2label is None else {"id2label": {str(i): n for i, n in self.id2label.items()}}),
            **({} if self.preprocessing is None else {"preprocessing": self.preprocessing}),
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``vprompt_model.safetensors`` (trainable state only) and ``vprompt_config.json`` (the
        method, its options, the backbone, and the class names as ``class_names`` and ``id2label``).

        A method with a peft equivalent (its ``peft_type``: LoRA) also writes peft's ``adapter_config.json`` +
        ``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained(<the same timm model>,
        directory)`` loads.
        """
        directory = ensure_dir(directory, "adapter folder")
        state = {k: v.detach().contiguous() for k, v in self.trainable_state_dict().items()}
        write_bytes(directory / WEIGHTS_FILE, save(state))
        write_text(directory / CONFIG_FILE, json.dumps(self.config_dict(), indent=2) + "\n")
        if self.method.peft_type is not None:
            save_peft(self.method, self.backbone, state, directory)
        return directory

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | Path, backbone: Backbone | None = None, revision: str | None = None
    ) -> TunedModel:
        """A saved model from a folder, a run folder (its ``adapter/``) or a Hugging Face Hub repo id
        (same as ``vprompt.load_adapter``), with its class names.

        vprompt's folders rebuild their backbone from the saved config unless ``backbone`` is given; a
        folder written by peft (LoRA) needs the ``backbone`` it was trained on.
        """
        return load_adapter(path_or_repo_id, backbone, revision=revision)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload vprompt adapter",
    ) -> str:
        """Upload what :meth:`save_pretrained` writes to the Hub model repo ``repo_id``; returns its URL."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vprompt-push-") as folder:
            self.save_pretrained(folder)
            return push_folder(Path(folder), repo_id, private=private, token=token, message=commit_message)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a trainable state exactly: same keys, same shapes, or a clear error (never partial)."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"saved {self.method.name} state does not fit this model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        for key, value in state.items():
            if value.shape != expected[key].shape:
                raise ValueError(
                    f"saved {self.method.name} state does not fit this model: {key} has shape "
                    f"{tuple(value.shape)} in the file and {tuple(expected[key].shape)} here"
                )
        own = dict(self.named_parameters()) | self._method_buffers()
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)

    def _method_buffers(self) -> dict[str, torch.Tensor]:
        """The method's persistent buffers (e.g. a fitted label mapping), keyed as in this model."""
        persistent = self.method.state_dict(keep_vars=True)
        return {f"method.{n}": b for n, b in self.method.named_buffers() if n in persistent}

    @property
    def num_classes(self) -> int:
        return self.method.num_target_classes or self.backbone.num_classes

    def extra_repr(self) -> str:
        return f"trainable={self.trainable_parameters():,}"


def attach(backbone: Backbone, method: str | Method, **options: Any) -> TunedModel:
    """Attach a method to ``backbone`` (frozen otherwise) and return the trainable model."""
    if isinstance(method, str):
        config = method_config(method, **options)  # unknown names and options are clear errors
        method = METHODS[method](config)
    elif options:
        raise ValueError("pass options either in the Method's config or as keywords, not both")
    return TunedModel(backbone, method)


def load_adapter(
    path_or_repo_id: str | Path, backbone: Backbone | None = None, revision: str | None = None
) -> TunedModel:
    """Rebuild a saved model: the backbone (built from the saved config unless given), the method, its state.

    ``path_or_repo_id`` is a folder written by ``save_pretrained`` (or by peft's, for LoRA: then
    ``backbone`` is required), a run folder (its ``adapter/``) or a Hugging Face Hub repo id (``owner/name``, downloaded and cached by
    ``huggingface_hub``). Loading onto a backbone other than the one it was trained on, or a state whose
    keys or shapes do not match, is an error, never a partial load.
    """
    directory = local_folder(path_or_repo_id, revision)
    if not has_config(directory) and (directory / RUN_CONFIG).is_file():  # a run folder: its adapter
        if not has_config(directory / RUN_ADAPTER):
            raise FileNotFoundError(
                f"{directory} is a run folder without {directory / RUN_ADAPTER}: the run has not finished "
                "(vprompt.load_run reads finished runs)"
            )
        directory = directory / RUN_ADAPTER
    if not has_config(directory) and is_peft_folder(directory):
        name, options = read_peft_config(directory, backbone)
        model = attach(backbone, name, **options.to_dict())
        model.load_trainable_state_dict(read_peft_weights(directory, name, backbone))
        return model
    config = read_config(directory)
    if backbone is None:
        backbone = rebuild_backbone(config["backbone"]["build_args"], Path(directory) / CONFIG_FILE)
    check_backbone_matches(config, backbone)
    model = attach(backbone, config["method"], **config["options"])
    model.load_trainable_state_dict(read_weights(directory))
    try:
        model.class_names = config.get("class_names")
    except ValueError as e:
        raise ValueError(
            f"{Path(directory) / CONFIG_FILE}: class_names: {e}; the adapter config is damaged"
        ) from None
    model.preprocessing = config.get("preprocessing")
    return model
