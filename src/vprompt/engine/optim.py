"""Optimiser and learning-rate schedule.

Optimisers: SGD (momentum 0.9), Adam or AdamW. Schedules (timm's, stepped by the optimisation-step
count, which the checkpoint keeps; with ``accumulate`` N a step takes N batches): a linear warm-up from 0
(``warmup_epochs`` or ``warmup_steps``), then
``cosine`` to ``min_lr`` at the last step, or ``multistep`` (× ``lr_decay`` at each of ``lr_milestones``,
fractions of the epochs: epoch ``int(f · epochs)``, as ILM-VP's ``MultiStepLR``). With
``schedule_step="epoch"`` the rate is updated once per epoch, as the VPT, VAPT and ILM-VP code do
(constant within an epoch; the first warm-up epoch then runs at 0, as theirs does).

``head_init="vpt"`` also takes the VPT code base's weight-decay rule: every trainable tensor decays
except the head's bias.
"""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler

from .config import OptimOptions

SGD_MOMENTUM = 0.9


def effective_batch(config: OptimOptions) -> int:
    """Images per optimiser step: the batch size times the batches accumulated into one step."""
    return config.batch_size * config.accumulate


def peak_lr(config: OptimOptions) -> float:
    """The learning rate after the optional batch/256 scaling (VPT's rule, by the effective batch)."""
    return config.lr * effective_batch(config) / 256 if config.lr_scale else config.lr


def param_groups(model: torch.nn.Module, config: OptimOptions) -> list[dict]:
    """The trainable parameters of ``model`` (a TunedModel) as optimiser groups with their weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.head_init != "vpt":
        return [{"params": params, "weight_decay": config.weight_decay}]
    bias = getattr(model.backbone.head, "bias", None)
    groups = [{"params": [p for p in params if p is not bias], "weight_decay": config.weight_decay}]
    if any(p is bias for p in params):  # VPT: no weight decay on the last layer's bias
        groups.append({"params": [bias], "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(params, config: OptimOptions) -> torch.optim.Optimizer:
    """An optimiser over ``params``: parameters, or groups from :func:`param_groups`."""
    params = list(params)
    if not params or all(isinstance(g, dict) and not g["params"] for g in params):
        raise ValueError("nothing to train: the method left no parameter trainable")
    lr, wd = peak_lr(config), config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=wd)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


class Schedule:
    """A timm scheduler stepped by update count, or only at epoch boundaries (``schedule_step="epoch"``)."""

    def __init__(self, scheduler: Scheduler, steps_per_epoch: int, per_epoch: bool):
        self.scheduler, self.steps_per_epoch, self.per_epoch = scheduler, steps_per_epoch, per_epoch

    def step_update(self, updates: int) -> None:
        if self.per_epoch:
            updates = updates // self.steps_per_epoch * self.steps_per_epoch
        self.scheduler.step_update(updates)


def build_schedule(optimizer: torch.optim.Optimizer, config: OptimOptions, steps_per_epoch: int) -> Schedule:
    """Linear warm-up from 0, then cosine to ``min_lr`` at the last step (or multistep decay)."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.warmup_steps is not None:
        warmup = min(total - 1, config.warmup_steps)
    else:
        warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "multistep":
        scheduler = MultiStepLRScheduler(
            optimizer,
            decay_t=[int(f * config.epochs) * steps_per_epoch for f in config.lr_milestones],
            decay_rate=config.lr_decay,
            warmup_t=warmup,
            warmup_lr_init=0.0,
            warmup_prefix=False,  # milestones count from the first step, as MultiStepLR's
            t_in_epochs=False,
        )
    else:
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=total - warmup,
            lr_min=config.min_lr,
            warmup_t=warmup,
            warmup_lr_init=0.0,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    return Schedule(scheduler, steps_per_epoch, config.schedule_step == "epoch")
