"""Optimiser and learning-rate schedule: SGD (momentum 0.9) or AdamW, linear warm-up then cosine.

The schedule is timm's ``CosineLRScheduler`` stepped once per optimisation step, so warm-up and decay
are smooth within epochs; its position is just the step count, which the checkpoint keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.scheduler import CosineLRScheduler

from .config import TrainConfig

SGD_MOMENTUM = 0.9


def peak_lr(config: TrainConfig) -> float:
    """The learning rate after the optional batch/256 scaling (VPT's rule)."""
    return config.lr * config.batch_size / 256 if config.lr_scale else config.lr


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if not params:
        raise ValueError("nothing to train: the method left no parameter trainable")
    lr = peak_lr(config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def build_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> CosineLRScheduler:
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine to ``min_lr`` at the last step."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    return CosineLRScheduler(
        optimizer,
        t_initial=total - warmup,
        lr_min=config.min_lr,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )
