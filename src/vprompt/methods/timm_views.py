"""timm's entry points on a ViT that carries prompt tokens (VPT, VAPT): what the user sees is honest.

:func:`hide_prompts` makes ``forward_intermediates`` skip the prompt tokens (its final features keep them
only where the head pools them, as ``forward_features``) and refuses ``prune_intermediate_layers``.
Design notes: ``docs/design.md``, section ``vprompt/methods/timm_views.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class _InstanceAttribute:
    """A handle that removes an attribute set on one module instance (like a hook handle)."""

    def __init__(self, module: nn.Module, name: str, value: Callable):
        if name in vars(module):
            raise RuntimeError(f"{type(module).__name__}.{name} is already overridden on this model")
        self.module, self.name = module, name
        setattr(module, name, value)

    def remove(self) -> None:
        vars(self.module).pop(self.name, None)


def hide_prompts(model: nn.Module, num_prompts: int, method: str) -> list[_InstanceAttribute]:
    """Make timm's intermediate-feature API on ``model`` (a timm ViT) skip ``num_prompts`` prompt tokens.

    Returns handles whose ``remove()`` restores timm's own methods.
    """
    handles = []
    if hasattr(type(model), "forward_intermediates"):
        fn = functools.partial(_forward_intermediates, model, num_prompts)
        functools.update_wrapper(fn, type(model).forward_intermediates)
        handles.append(_InstanceAttribute(model, "forward_intermediates", fn))
    if hasattr(type(model), "prune_intermediate_layers"):
        handles.append(
            _InstanceAttribute(model, "prune_intermediate_layers", functools.partial(_refuse_pruning, method))
        )
    return handles


def _refuse_pruning(method: str, *args: Any, **kwargs: Any) -> None:
    raise RuntimeError(
        f"prune_intermediate_layers is refused while {method} is attached: the prompt tokens are removed "
        "at the output of the last block, which pruning would drop; detach the method first, or use "
        "forward_intermediates(..., stop_early=True)"
    )


def _strip(tokens: torch.Tensor, num_prompts: int, patches: int) -> torch.Tensor:
    """Spatial tokens ``[prompts, X]`` → ``X`` (unchanged when they are already ``X``)."""
    if tokens.shape[1] == patches:
        return tokens
    if tokens.shape[1] != patches + num_prompts:
        raise RuntimeError(
            f"expected {patches} patch tokens (+{num_prompts} prompt tokens), got {tokens.shape[1]}"
        )
    return tokens[:, num_prompts:]


def _takes_last(depth: int, indices: int | list[int] | None) -> bool:
    """Whether timm's ``indices`` take the last block's output (an int ``n``: the last ``n`` blocks)."""
    if indices is None or isinstance(indices, int):
        return True
    return depth - 1 in [i + depth if i < 0 else i for i in indices]


def _forward_intermediates(
    model: nn.Module,
    num_prompts: int,
    x: torch.Tensor,
    indices: int | list[int] | None = None,
    return_prefix_tokens: bool = False,
    norm: bool = False,
    stop_early: bool = False,
    output_fmt: str = "NCHW",
    intermediates_only: bool = False,
    output_dict: bool = False,
    **kwargs: Any,
):
    """timm's ``VisionTransformer.forward_intermediates`` with the prompt tokens removed everywhere."""
    if output_fmt not in ("NCHW", "NLC"):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
    batch, _, height, width = x.shape
    prefix = model.num_prefix_tokens
    final, raw = type(model).forward_intermediates(
        model,
        x,
        indices,
        return_prefix_tokens=bool(prefix),  # timm < 1.0.13 fails on True without prefix tokens
        norm=norm,
        stop_early=stop_early,
        output_fmt="NLC",
        intermediates_only=False,
        **kwargs,
    )
    h, w = model.patch_embed.dynamic_feat_size((height, width))
    if prefix:
        spatial, prefix_tokens = [y for y, _ in raw], [p for _, p in raw]
    else:
        spatial, prefix_tokens = list(raw), None
    spatial = [_strip(y, num_prompts, h * w) for y in spatial]
    # the last block removes the prompts, or leaves them for the head to pool (then ``final`` keeps them,
    # as forward_features does); stop_early may end before it
    ran_to_end = not stop_early or _takes_last(len(model.blocks), indices)
    if not ran_to_end and final.shape[1] == prefix + num_prompts + h * w:
        final = torch.cat([final[:, :prefix], final[:, prefix + num_prompts :]], dim=1)
    if output_fmt == "NCHW":
        spatial = [y.reshape(batch, h, w, -1).permute(0, 3, 1, 2).contiguous() for y in spatial]
    if output_dict:
        result: dict[str, Any] = {"image_intermediates": spatial}
        if prefix_tokens is not None and return_prefix_tokens:
            result["image_intermediates_prefix"] = prefix_tokens
        if not intermediates_only:
            result["image_features"] = final
        return result
    if return_prefix_tokens and prefix_tokens is not None:
        spatial = list(zip(spatial, prefix_tokens, strict=True))
    return spatial if intermediates_only else (final, spatial)
