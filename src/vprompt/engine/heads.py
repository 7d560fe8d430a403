"""How the task head starts: the backbone's own initialisation, or the VPT code base's.

``head_init="vpt"`` (KMnP/vpt ``src/models/mlp.py``, ``MLP`` with ``special_bias=True``, as
``src/models/vit_models.py`` builds the head): Kaiming-normal weights with fan-out (std ``sqrt(2 / C)``
for ``C`` classes) and a constant bias of ``-log((1 - 0.01) / 0.01) = -log(99)``. Its weight-decay rule
(no decay on the head's bias, ``src/solver/optimizer.py``) is applied by :func:`.optim.param_groups`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: the VPT head's bias: a prior probability of 0.01 per class
VPT_BIAS = -math.log((1 - 0.01) / 0.01)


def init_head(model, how: str, seed: int) -> None:
    """Initialise ``model``'s (a TunedModel's) trained head as ``how`` says (``default``: leave it)."""
    if how == "default":
        return
    if how != "vpt":
        raise ValueError(f"unknown head_init {how!r}; choose one of: default, vpt")
    head = model.backbone.head
    if not model.method.trains_head or not model.backbone.new_head:
        raise ValueError(
            f"head_init 'vpt' initialises a new, trained head; {model.method.name} here maps onto the "
            "backbone's source classifier instead"
        )
    if not isinstance(head, nn.Linear):
        raise ValueError(f"head_init 'vpt' needs a linear head, got {type(head).__name__}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weight = torch.empty(head.weight.shape)
    nn.init.kaiming_normal_(weight, a=0, mode="fan_out", generator=generator)
    with torch.no_grad():
        head.weight.copy_(weight)
        if head.bias is not None:
            head.bias.fill_(VPT_BIAS)
