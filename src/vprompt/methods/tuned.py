"""A backbone with one method attached: freezing, the head, counting, train/eval, save and load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from ..backbones import Backbone
from ..files import ensure_dir, refuse_non_finite, write_bytes, write_text
from .base import Method

#: vprompt's own files (names of their own: peft's are ``adapter_config.json`` / ``adapter_model.safetensors``,
#: which a LoRA model writes as well, see :mod:`.peft_format`)
WEIGHTS_FILE = "vprompt_model.safetensors"
CONFIG_FILE = "vprompt_config.json"
#: the names used before 0.1.0's peft-format files; still read
LEGACY_FILES = ("adapter.safetensors", "adapter_config.json")
FORMAT_VERSION = 1


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

    # -------------------------------------------------------------------------------- detaching

    def detach(self) -> Backbone:
        """Remove the method and return the backbone exactly as it was (structure and grad flags)."""
        self.method.detach(self.backbone)
        self._restore_flags()
        return self.backbone

    def merge_and_unload(self) -> Backbone:
        """Fold the trained weights into the backbone and return it without the method (as peft's).

        For ``lora`` each target becomes ``W + (alpha / r) · B A``; for the methods that train the
        backbone's own parameters (``linear``, ``full``, ``norm``, ``bitfit``) it equals :meth:`detach`.
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

        A LoRA model also writes peft's ``adapter_config.json`` + ``adapter_model.safetensors``, which
        ``peft.PeftModel.from_pretrained(<the same timm model>, directory)`` loads.
        """
        directory = ensure_dir(directory, "adapter folder")
        state = {k: v.detach().contiguous() for k, v in self.trainable_state_dict().items()}
        write_bytes(directory / WEIGHTS_FILE, save(state))
        write_text(directory / CONFIG_FILE, json.dumps(self.config_dict(), indent=2) + "\n")
        if self.method.name == "lora":
            from .peft_format import save_peft

            save_peft(self, directory)
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
        from . import load_adapter

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

        from .hub import push_folder

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


def check_backbone_matches(config: dict[str, Any], backbone: Backbone) -> None:
    """Refuse to load an adapter onto a backbone other than the one it was trained on."""
    saved = config["backbone"]
    here = {"name": backbone.name, "img_size": backbone.input_size[-1], "num_classes": backbone.num_classes}
    wrong = {k: (saved[k], v) for k, v in here.items() if saved.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in wrong.items())
        raise ValueError(f"adapter was trained on another backbone ({details})")


def _own_file(directory: str | Path, name: str, legacy: str) -> Path:
    """``directory/name``, or the file's pre-0.1.0 name when only that exists."""
    path = Path(directory) / name
    if not path.is_file() and (Path(directory) / legacy).is_file():
        return Path(directory) / legacy
    return path


def has_config(directory: str | Path) -> bool:
    """Whether ``directory`` holds a vprompt adapter config (current or legacy name)."""
    path = _own_file(directory, CONFIG_FILE, LEGACY_FILES[1])
    if path.name == CONFIG_FILE:
        return path.is_file()
    try:
        return "format" in json.loads(path.read_text(encoding="utf-8"))  # not peft's file of that name
    except (OSError, ValueError, TypeError):
        return False


def read_config(directory: str | Path) -> dict[str, Any]:
    path = _own_file(directory, CONFIG_FILE, LEGACY_FILES[1])
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the adapter config is damaged") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not an adapter config (expected a JSON object)")
    if config.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported adapter format {config.get('format')!r}")
    backbone = config.get("backbone")
    problems = [
        k
        for k, kind in (("method", str), ("options", dict), ("backbone", dict))
        if not isinstance(config.get(k), kind)
    ]
    if isinstance(backbone, dict) and not isinstance(backbone.get("build_args"), dict):
        problems.append("backbone.build_args")
    names = config.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        problems.append("class_names")
    if not isinstance(config.get("preprocessing", {}), dict):
        problems.append("preprocessing")
    if problems:
        raise ValueError(f"{path}: damaged adapter config (missing or wrong: {', '.join(problems)})")
    refuse_non_finite(config, path)
    return config


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    path = _own_file(directory, WEIGHTS_FILE, LEGACY_FILES[0])
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {directory}")
    try:
        state = load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{path}: damaged or not a safetensors file ({e})") from None
    refuse_non_finite(state, path)
    return state
