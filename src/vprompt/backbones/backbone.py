"""The :class:`Backbone`: a pretrained classifier, its data config, and its named sites."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import cls_only
from .families import Family, classifier_name, family_of, site_points
from .sites import Site, measure_sites


class Backbone(nn.Module):
    """A (frozen-to-be) pretrained classifier with named sites.

    ``model`` is the underlying timm / torchvision module, ``data_config`` a timm-style data config
    (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``) from which
    transforms are derived, and ``sites`` the ordered activation sites with their shapes.

    On a CLS-pooled timm ViT, :meth:`forward` and :meth:`forward_from` let the last block compute the
    CLS row alone, the only row the head reads (exact; :mod:`vprompt.backbones.cls_only` says when it
    steps aside). ``cls_only_last_block = False`` turns that off. Likewise every block leaves the rows
    that the function hooked at its output never reads uncomputed (VPT-deep's and VAPT's prompt rows);
    ``skip_unread_rows = False`` turns that off.
    """

    #: let the last block of a CLS-pooled ViT compute only the CLS row during forwards to the logits
    cls_only_last_block: bool = True
    #: let a ViT block leave the output rows its hooked function never reads uncomputed (same forwards)
    skip_unread_rows: bool = True
    #: peft's hook for state-dict keys (``PeftModel.from_pretrained`` reads it, as for transformers'
    #: models): adapter files name modules of the inner ``model``, here one level down
    _checkpoint_conversion_mapping = {r"^(?!model\.)": "model."}

    def __init__(
        self,
        model: nn.Module,
        data_config: dict[str, Any],
        name: str,
        source: str = "random init",
        head_name: str | None = None,
        new_head: bool = False,
    ):
        super().__init__()
        self.model = model
        #: dotted name of the classifier module inside ``model``
        self.head_name = head_name or classifier_name(model)
        #: True when the classifier is a fresh head for the task, False when it is the source's own
        self.new_head = new_head
        #: the arguments of ``vprompt.backbone`` that rebuild this backbone (set by it)
        self.build_args: dict[str, Any] = {"name": name}
        self.data_config = dict(data_config)
        self.name = name
        self.source = source
        self.family: Family = family_of(model)
        cls_only.install(model)
        self.refresh_sites()

    def refresh_sites(self) -> None:
        """Re-derive the sites (after the model's structure or input size changed)."""
        sites = measure_sites(
            self.model, site_points(self.model, self.family, self.head_name), self.input_size
        )
        token_info = self.family.token_info(self.model)
        if token_info is not None:
            prefix, grid = token_info
            for site in sites.values():
                if site.layout == "tokens":
                    site.prefix_tokens, site.grid = prefix, grid
        self.sites: dict[str, Site] = sites
        self.steps = self.family.steps(self.model)
        #: site → index of the step whose output it is
        self._step_of = {name: i for i, (names, _) in enumerate(self.steps) for name in names}

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])

    @property
    def head(self) -> nn.Module:
        """The classifier module (a new linear head, or the source head when kept)."""
        return self.model.get_submodule(self.head_name)

    @property
    def num_classes(self) -> int:
        head = self.head
        return head.out_features if isinstance(head, nn.Linear) else 0

    def site(self, name: str) -> Site:
        """The site called ``name``; a clear error lists the valid names otherwise."""
        try:
            return self.sites[name]
        except KeyError:
            raise KeyError(
                f"backbone {self.name!r} has no site {name!r}; its sites are: {', '.join(self.sites)}"
            ) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with cls_only.reading_cls(self.model, self.cls_only_last_block, self.skip_unread_rows):
            return self.model(x)

    def cls_only_status(self) -> str:
        """Whether a forward to the logits now computes the last block's CLS row alone, and if not why."""
        if not self.cls_only_last_block:
            return "all tokens: cls_only_last_block is off"
        reason = cls_only.why_not(self.model)
        return "CLS row only" if reason is None else f"all tokens: {reason}"

    def rows_status(self) -> str:
        """In which blocks a forward to the logits leaves rows no one reads uncomputed, or why none."""
        return cls_only.rows_status(self.model, self.skip_unread_rows)

    def can_resume_at(self, name: str) -> bool:
        """Whether :meth:`forward_from` can continue a forward pass from site ``name``."""
        if name == "pre_logits":
            return self._head_gives_the_output()
        return name == "input" or name in self._step_of

    def _head_gives_the_output(self) -> bool:
        """True when the classifier's output is the model's output (not e.g. DeiT's two averaged heads)."""
        if not hasattr(self, "_head_is_last"):
            seen = []
            handle = self.head.register_forward_hook(lambda _m, _a, out: seen.append(out))
            was_training = self.training
            try:
                self.eval()
                with torch.no_grad():
                    device = next((p.device for p in self.parameters()), torch.device("cpu"))
                    out = self.model(torch.zeros(1, *self.input_size, device=device))
            finally:
                handle.remove()
                self.train(was_training)
            self._head_is_last = bool(seen) and seen[-1] is out
        return self._head_is_last

    def forward_from(self, name: str, activation: torch.Tensor) -> torch.Tensor:
        """The logits for a *raw* activation at site ``name`` (as :meth:`Site.capture` returns it).

        The functions hooked at the site are applied, then only the rest of the network runs:
        ``forward_from(s, site(s).capture(model, x)) == forward(x)``.
        """
        site = self.site(name)
        if name == "input":
            return self(activation)  # the input's hooks run as the model's pre-hooks
        with cls_only.reading_cls(self.model, self.cls_only_last_block, self.skip_unread_rows):
            return self._forward_from(site, activation)

    def _forward_from(self, site: Site, activation: torch.Tensor) -> torch.Tensor:
        name = site.name
        if name == "pre_logits" and self.can_resume_at(name):
            return self.head(activation)  # likewise the classifier's
        if not self.can_resume_at(name):
            raise ValueError(f"{self.name!r} cannot continue a forward pass from site {name!r}")
        x = site.apply(activation)
        for _, step in self.steps[self._step_of[name] + 1 :]:
            x = step(x)
        return x

    def sites_table(self) -> str:
        """A plain-text table of the sites: name, layout and activation shape (batch excluded)."""
        rows = [("site", "layout", "shape")]
        for site in self.sites.values():
            rows.append((site.name, site.layout, "×".join(map(str, site.shape))))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, family={self.family.name}, input_size={self.input_size}"


def replace_classifier(model: nn.Module, num_classes: int) -> str:
    """Give ``model`` a fresh linear head with ``num_classes`` outputs (0 = no head, features out).

    Returns the head's dotted name (found before the swap, so an ``Identity`` head is still named).
    """
    name = classifier_name(model)
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return classifier_name(model)
    old = model.get_submodule(name)
    new = nn.Linear(old.in_features, num_classes) if num_classes > 0 else nn.Identity()
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
    return name
