"""The training loop: epochs of optimisation steps, validation, model selection, resumable checkpoints.

Plain PyTorch: the trainer steps whatever parameters the attached method left trainable. The frozen
backbone stays in eval mode (``TunedModel.train`` sees to it); only the method's modules follow
train/eval. One checkpoint is written atomically after every epoch; a run that is killed resumes from
the last one and ends with exactly the weights and metrics of an uninterrupted run.

Training tricks, timm's where timm has them: gradient accumulation (``accumulate`` batches per optimiser
step, never across an epoch's end, so a checkpoint is always between steps), mixup/cutmix (timm's
``Mixup`` and ``SoftTargetCrossEntropy``), an EMA of the trained tensors (timm's ``ModelEmaV3``: with it,
the EMA weights are validated, selected, saved and tested) and early stopping on a validation metric.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from ..model import TunedModel
from .cache import (
    CacheRefused,
    FeatureCache,
    build_cache,
    cache_site,
    choose_storage,
    estimate_bytes,
    shared_store,
)
from .config import LoopOptions, OptimOptions
from .details import TOP_K
from .distributed import Context, split_evenly, synchronize
from .optim import build_optimizer, build_schedule, effective_batch, param_groups
from .precision import Precision
from .run_data import (
    RunData,
    SeededItems,
    eval_loader,
    loader_options,
    private_generator,
    seeded,
    train_loader,
)
from .rundir import RunDir
from .tracking import Tracker

#: steps between checks of the loss for NaN/inf (each check waits for the device)
CHECK_EVERY = 10


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class ResumeAt(nn.Module):
    """``model`` continued from the raw activations at ``site`` (what a frozen-prefix cache holds)."""

    def __init__(self, model: TunedModel, site: str):
        super().__init__()
        self.model, self.site = model, site

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(self.site, activation)


@torch.no_grad()
def evaluate(
    model: TunedModel,
    batches,
    ctx: Context,
    precision: Precision,
    site: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Top-1 and top-k accuracy (k = :data:`~.details.TOP_K`, or the number of classes when fewer), mean
    loss and the confusion matrix (rows: true class) over ``batches`` of ``(images, labels)`` (summed over
    processes), and images per second. With ``site``, the batches hold raw activations there instead of
    images. ``keep``: also each item's ``(label, prediction, confidence, top-k class ids)``, in order."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss, correct, top-k: no sync per batch
    classes = model.num_classes
    k = min(TOP_K, classes)
    confusion = torch.zeros(classes * classes, dtype=torch.float64, device=ctx.device)
    kept, count = [], 0
    synchronize(ctx.device)
    start = time.perf_counter()
    for x, y in batches:
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with precision.autocast():
            logits = model(x) if site is None else model.forward_from(site, x)
        logits = at_least_float32(logits)
        predicted = logits.argmax(-1)
        top = logits.topk(k, dim=-1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (predicted == y).sum()
        sums[2] += (top == y[:, None]).any(-1).sum()
        confusion += torch.bincount(y * classes + predicted, minlength=classes * classes)
        if keep:
            confidence = logits.softmax(-1).gather(1, predicted[:, None])[:, 0]
            kept.append((y.cpu(), predicted.cpu(), confidence.cpu(), top.cpu()))
        count += len(y)
    loss, correct, top_correct = sums.tolist()  # waits for the device
    seconds = time.perf_counter() - start
    model.train(was_training)
    correct, top_correct, loss, count, seconds = ctx.all_sum([correct, top_correct, loss, count, seconds])
    if count == 0:
        raise ValueError("evaluation set is empty")
    matrix = ctx.all_sum(confusion.tolist())
    result = {
        "accuracy": 100.0 * correct / count,
        "top_k": k,
        "top_k_accuracy": 100.0 * top_correct / count,
        "loss": loss / count,
        "images": int(count),
        "images_per_second": count / max(seconds / ctx.world, 1e-9),
        "confusion": [[int(v) for v in matrix[i : i + classes]] for i in range(0, len(matrix), classes)],
    }
    if keep:
        mine = [
            (int(label), int(p), float(c), t.tolist())
            for y_, p_, c_, t_ in kept
            for label, p, c, t in zip(y_.tolist(), p_.tolist(), c_.tolist(), t_, strict=True)
        ]
        result["predictions"] = [row for part in ctx.gather(mine) for row in part]  # shares in rank order
    return result


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the loss: half precision (autocast) raised to float32; float64 kept as it is."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class Mixer:
    """timm's ``Mixup`` (mixup and/or cutmix, label smoothing folded into the soft targets), its random
    draws seeded from ``(seed, epoch, batch)``: the same for a resumed run as for an uninterrupted one."""

    def __init__(self, config: LoopOptions, num_classes: int):
        self.seed = config.seed
        self.mixup = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            prob=config.mixup_prob,
            label_smoothing=config.label_smoothing,
            num_classes=num_classes,
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int):
        with seeded(hash((self.seed, epoch, batch))):
            return self.mixup(x, y)


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain containers (a checkpoint loads with ``weights_only=True``)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }
    version, internal, gauss_next = random.getstate()
    python_state = {"version": version, "internal": list(internal), "gauss_next": gauss_next}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": python_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], key, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """What a run has done so far: everything a checkpoint must hold besides weights and optimiser."""

    epoch: int = 0  # epochs finished
    updates: int = 0  # optimisation steps taken
    train_seconds: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_accuracy: float = -math.inf
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    # early stopping: the best value of the watched metric (higher is better: -loss for a loss), the epoch
    # it was reached, validations since, and the epoch the run stopped after (None: it did not)
    watched_best: float = -math.inf
    watched_epoch: int | None = None
    stale_validations: int = 0
    stopped_epoch: int | None = None
    # a non-finite loss (or weights): where it first showed (see Trainer.diverge); None: it did not
    diverged: dict[str, Any] | None = None
    # compute spent (for a sweep's accounting): images through forward+backward, images evaluated
    images_trained: int = 0
    images_evaluated: int = 0
    eval_seconds: float = 0.0
    # frozen-prefix caches: built here (and the images through the prefix), or another run's reused
    caches_built: int = 0
    caches_reused: int = 0
    cache_images: int = 0
    cache_images_saved: int = 0
    cache_seconds: float = 0.0


class Diverged(Exception):
    """Raised inside an epoch to end it at once (``--nonfinite stop``)."""


class Trainer:
    """Trains ``model`` (a :class:`TunedModel`) on ``data`` as ``config`` (the loop's options) and ``optim``
    (the optimiser's, the epochs and batches included) say, in ``run`` (if given)."""

    def __init__(
        self,
        model: TunedModel,
        data: RunData,
        config: LoopOptions,
        optim: OptimOptions,
        ctx: Context,
        run: RunDir | None,
    ):
        self.model, self.data, self.config, self.optim, self.ctx, self.run = (
            model,
            data,
            config,
            optim,
            ctx,
            run,
        )
        self.precision = Precision.choose(config.precision, ctx.device)
        model.to(ctx.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.cache_plan, self.cache_note = self.plan_cache()
        self.train_cache: FeatureCache | None = None
        self.cache_shared = False  # a cache was reused from another run of the sweep
        self.val_cache: FeatureCache | None = None
        site = self.cache_plan[0] if self.cache_plan else None
        self.forward_model = ResumeAt(model, site) if site else model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.forward_model, device_ids=ids)
        self.loader, self.sampler = train_loader(
            data.train, optim.batch_size, config.seed, config.workers, ctx, data.augments
        )
        self.batches_per_epoch = len(self.sampler)
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training split has {len(data.train)} images: not one batch")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / optim.accumulate)  # optimiser steps
        self.mixer = Mixer(config, model.num_classes) if self.mixing else None
        if self.mixer is not None:
            self.check_even_batches()
        self.trained = nn.ParameterList(self.params)  # the trained tensors, as one module (for the EMA)
        self.ema = ModelEmaV3(self.trained, decay=config.ema) if config.ema else None
        self.optimizer = build_optimizer(param_groups(model, optim), optim)
        self.schedule = build_schedule(self.optimizer, optim, self.steps_per_epoch)
        self.eval_batch = max(1, optim.batch_size // ctx.world) * 2
        self.progress = Progress()
        self.until = optim.epochs  # fit() trains up to this epoch (a search may pause a run earlier)
        self.tracker = Tracker()  # run.py sets the one --log asks for
        self.options: dict[str, str] = {}  # run.py sets the digests of the options that train the run

    @property
    def mixing(self) -> bool:
        return bool(self.config.mixup or self.config.cutmix)

    def check_even_batches(self) -> None:
        """timm's Mixup mixes each batch with its reverse, which needs an even number of images."""
        ctx = self.ctx
        sizes = {len(split_evenly(b, ctx.world, ctx.rank)) for b in self.sampler.global_batches()}
        odd = sorted(n for n in sizes if n % 2)
        if odd:
            raise ValueError(
                f"--mixup/--cutmix (timm's Mixup) need batches of an even number of images, and this run "
                f"has batches of {', '.join(map(str, odd))} (per process); choose --batch-size and "
                "--train-size so that every batch is even"
            )

    def random_inputs(self) -> str | None:
        """Why the inputs of a training step differ from epoch to epoch, or None."""
        mixing = "--mixup/--cutmix mix the training images of every batch" if self.mixing else None
        return " and ".join(filter(None, [self.data.plan.randomness, mixing])) or None

    # ------------------------------------------------------------------------ frozen-prefix cache
    def plan_cache(self) -> tuple[tuple[str, str] | None, str]:
        """``((site, storage) or None, why)``; an explicit ``--cache memory|disk`` that would change the
        results is refused."""
        cfg = self.config
        if cfg.cache == "off":
            return None, "off (--cache off)"
        site, why = cache_site(self.model, self.random_inputs())
        if site is None:
            if cfg.cache != "auto":
                raise CacheRefused(f"--cache {cfg.cache} refused: {why}; use --cache off")
            return None, why
        items = len(self.data.train) + (len(self.data.val) if self.data.val is not None else 0)
        nbytes = estimate_bytes(self.model, site, items, cfg.cache_dtype)
        storage = choose_storage(cfg.cache, nbytes)
        if storage is None:
            return (
                None,
                f"{nbytes / 2**30:.1f} GiB of activations at {site!r} exceed the memory budget; use --cache disk",
            )
        return (site, storage), why

    def build_caches(self) -> None:
        """Compute the cached activations (training split; validation too when it is evaluated repeatedly)."""
        if self.cache_plan is None or self.train_cache is not None:
            return
        site, storage = self.cache_plan
        cfg = self.config
        directory = self.run.path if self.run is not None else None

        store = shared_store() if not self.ctx.distributed else None  # a sweep's runs share them
        p = self.progress

        def build(dataset, role: str) -> FeatureCache:
            def make() -> FeatureCache:
                return build_cache(
                    self.model,
                    site,
                    dataset,
                    self.ctx,
                    self.eval_batch,
                    cfg.cache_dtype,
                    storage,
                    directory,
                    cfg.workers,
                    self.precision.autocast,  # the activations the uncached run computes
                )

            cache, built = (make(), True) if store is None else store.get(self.cache_key(dataset, role), make)
            if built:
                p.caches_built, p.cache_images, p.cache_seconds = (
                    p.caches_built + 1,
                    p.cache_images + len(dataset),
                    p.cache_seconds + cache.seconds,
                )
            else:
                p.caches_reused, p.cache_images_saved = (
                    p.caches_reused + 1,
                    p.cache_images_saved + len(dataset),
                )
                self.cache_shared = True
                cache = dataclasses.replace(cache, seconds=0.0)  # the same tensors; this run built nothing
            return cache

        self.train_cache = build(self.data.train, "train")
        if self.data.val is not None and self.optim.epochs // cfg.eval_every > 1:
            self.val_cache = build(self.data.val, "val")

    def cache_key(self, dataset, role: str) -> str:
        """What a cached activation depends on, as a SHA-256: every frozen tensor of the model (the
        backbone's weights, whatever the seed), the method and its options, the site, the data (its
        spec, split, items and their fingerprint, the transform's size and normalisation), the cache
        dtype, the precision, the device and the batch the cache is built in (so that a shared cache
        is the one this run would build, bit for bit)."""
        from ..data.fingerprint import fingerprint

        digest = hashlib.sha256()
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if tensor.requires_grad:
                continue  # trained: the cache's validity check proves the activation ignores it
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        cfg, data = self.config, self.data
        described = {
            "frozen": digest.hexdigest(),
            "method": self.model.method.name,
            "method_options": self.model.method.config.to_dict(),
            "site": self.cache_plan[0] if self.cache_plan else None,
            "data": data.describe() | {"class_names": None},
            "role": role,
            "split": getattr(data.plan.splits, role),
            "fingerprint": fingerprint(dataset),
            "data_config": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.model.data_config.items()
            },
            "preprocess": (self.model.preprocessing or {}).get("preprocess"),
            "cache_dtype": cfg.cache_dtype,
            "precision": self.precision.name,
            "device": str(self.ctx.device),
            "batch": self.eval_batch,
        }
        text = json.dumps(described, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def cache_summary(self) -> dict[str, Any]:
        if self.train_cache is None:
            return {"site": None, "why": self.cache_note}
        caches = [c for c in (self.train_cache, self.val_cache) if c is not None]
        return {
            "site": self.train_cache.site,
            "storage": self.train_cache.storage,
            "device": str(self.train_cache.device),
            "dtype": self.config.cache_dtype,
            "mib": sum(c.nbytes for c in caches) / 2**20,
            "build_seconds": sum(c.seconds for c in caches),
            "shared": "reused: built by another run of the sweep" if self.cache_shared else None,
            "why": self.cache_note,
        }

    def cache_compute(self) -> dict[str, Any]:
        """Caches built and reused so far (a sweep's accounting: builds saved)."""
        p = self.progress
        return {
            "caches_built": p.caches_built,
            "caches_reused": p.caches_reused,
            "cache_images": p.cache_images,
            "cache_images_saved": p.cache_images_saved,
            "cache_seconds": p.cache_seconds,
        }

    def train_batches(self):
        """This process's ``(inputs, labels)`` of the current epoch: images, or cached activations."""
        if self.train_cache is None:
            for x, y in self.loader:
                yield x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)
        else:
            for keys in self.sampler:
                yield self.train_cache.batch([i for _, i in keys], self.ctx.device)

    # --------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        p = self.progress
        return {
            "model": self.model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "progress": {k: v for k, v in vars(p).items() if k != "best_state"},
            "best_state": p.best_state,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": self.ctx.gather(rng_state()),
            "options": self.options,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state; a state that does not fit this run is a clear error."""
        try:
            progress = Progress(**state["progress"], best_state=state["best_state"])
            rng = list(state["rng"])
            fits = 0 <= progress.epoch <= self.optim.epochs and len(progress.metrics) == progress.epoch
            fits = fits and progress.updates == progress.epoch * self.steps_per_epoch
        except (KeyError, TypeError) as e:
            raise ValueError(f"the checkpoint does not hold a vprompt training state ({e})") from None
        if not fits:
            raise ValueError(
                f"the checkpoint does not fit this run: it claims {progress.epoch} finished epochs and "
                f"{progress.updates} steps ({len(progress.metrics)} metric rows) for a run of "
                f"{self.optim.epochs} epochs × {self.steps_per_epoch} steps"
            )
        self.model.load_trainable_state_dict(state["model"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the checkpoint holds no EMA of the weights, and this run keeps one (--ema)")
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.precision.scaler and state["scaler"]:
            self.precision.scaler.load_state_dict(state["scaler"])
        self.progress = progress
        self.schedule.step_update(self.progress.updates)
        if len(rng) != self.ctx.world:
            raise ValueError(f"the checkpoint was written by {len(rng)} processes; resume it with as many")
        set_rng_state(rng[self.ctx.rank])

    # ------------------------------------------------------------------------------- training
    def mapping_loader(self):
        """The whole training split in order, for methods that fit something before an epoch (ILM)."""
        if self.train_cache is not None and self.train_cache.site == "input":
            return self.train_cache.loader(self.eval_batch, Context(device=self.ctx.device))  # lazy
        items = SeededItems(self.data.train, self.config.seed, self.data.augments)
        keys = [(self.progress.epoch, i) for i in range(len(items))]
        subset = torch.utils.data.Subset(items, keys)
        options = loader_options(self.data.train, self.config.workers, self.ctx.device)
        return DataLoader(subset, batch_size=self.eval_batch, generator=private_generator(), **options)

    def train_epoch(self, bar) -> dict[str, float]:
        ctx, model = self.ctx, self.model
        epoch = self.progress.epoch
        model.method.on_epoch_start(model, self.mapping_loader(), epoch)
        model.train()
        self.sampler.set_epoch(epoch)
        sizes = [len(b) for b in self.sampler.global_batches()]  # global images per batch
        n = self.optim.accumulate
        loss_sum = torch.zeros((), device=ctx.device)
        correct = torch.zeros((), device=ctx.device)
        finite: list[torch.Tensor] = []  # per batch since the last check: was its loss finite?
        checked = 0  # batches before ``finite``'s first
        seen = 0
        step_rows: list[tuple[int, torch.Tensor, float]] = []  # (global step, loss, lr): for the tracker
        step_loss, step_images = torch.zeros((), device=ctx.device), 0  # this process's, this step's
        synchronize(ctx.device)  # time this epoch's work only
        start = time.perf_counter()
        for batch, (x, y) in enumerate(self.train_batches()):
            first, last = batch % n == 0, (batch + 1) % n == 0 or batch + 1 == len(sizes)
            step_n = sum(sizes[batch - batch % n : batch - batch % n + n])  # global images of this step
            targets = y
            if self.mixer is not None:
                x, targets = self.mixer(x, y, epoch, batch)
            if first:
                self.optimizer.zero_grad(set_to_none=True)
            with self.accumulating(last):
                with self.precision.autocast():
                    logits = self.forward_model(x)
                summed = self.loss_sum(logits, targets)
                loss = summed * (ctx.world / step_n)  # DDP averages: the result is the global mean's gradient
                scaler = self.precision.scaler
                (scaler.scale(loss) if scaler else loss).backward()
            finite.append(torch.isfinite(summed.detach()))
            step_loss += summed.detach()
            step_images += len(y)
            if last:
                self.optimizer_step()
                step_rows.append((self.progress.updates, step_loss / step_images, self.step_lr))
                step_loss, step_images = torch.zeros((), device=ctx.device), 0
            loss_sum += summed.detach()
            correct += (logits.argmax(-1) == y).sum()
            seen += len(y)
            self.progress.images_trained += len(y)
            if last and (len(step_rows) == CHECK_EVERY or batch + 1 == len(sizes)):
                self.check_finite(finite, checked, epoch, batch)
                checked += len(finite)
                finite = []
                if self.stopping:
                    break
                losses = torch.stack([r[1] for r in step_rows]).tolist()  # one sync, as the check's
                self.tracker.steps([(r[0], loss, r[2]) for r, loss in zip(step_rows, losses, strict=True)])
                step_rows.clear()
                if bar is not None:
                    rate = seen * ctx.world / (time.perf_counter() - start)
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.3f}",
                        acc=f"{100 * correct.item() / seen:.1f}",
                        img_s=f"{rate:.0f}",
                    )
            if bar is not None:
                bar.update(1)
        synchronize(ctx.device)
        seconds = time.perf_counter() - start
        if self.stopping:  # the loss diverged in this epoch: it ends here, unrecorded
            self.progress.train_seconds += seconds
            raise Diverged
        loss_total, correct_total, seen_total = ctx.all_sum([loss_sum.item(), correct.item(), seen])
        return {
            "train_loss": loss_total / seen_total,
            "train_accuracy": 100.0 * correct_total / seen_total,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "train_images_per_second": seen_total / seconds,
        }

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The summed cross-entropy of a batch: against soft targets (mixup, smoothing folded in) or labels."""
        logits = at_least_float32(logits)
        if self.mixer is not None:
            return SoftTargetCrossEntropy()(logits, targets) * len(targets)
        return F.cross_entropy(logits, targets, reduction="sum", label_smoothing=self.config.label_smoothing)

    def accumulating(self, last: bool):
        """Gradients of a batch that is not the last of an optimiser step stay local (DDP's ``no_sync``)."""
        if self.ctx.distributed and not last:
            return self.forward_model.no_sync()
        return contextlib.nullcontext()

    def optimizer_step(self) -> None:
        """One optimiser step on the accumulated gradients, then the schedule and the EMA follow it."""
        scaler = self.precision.scaler
        if self.config.grad_clip is not None:
            if scaler:
                scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        if scaler:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step took (for the tracker)
        self.progress.updates += 1
        self.schedule.step_update(self.progress.updates)
        if self.ema is not None:
            self.ema.update(self.trained, step=self.progress.updates)  # as timm's train.py

    @property
    def stopping(self) -> bool:
        """The run has diverged and ``--nonfinite stop`` ends it."""
        return self.progress.diverged is not None and self.config.nonfinite == "stop"

    def check_finite(self, finite: list[torch.Tensor], checked: int, epoch: int, batch: int) -> None:
        """``finite``: per batch since batch ``checked`` of this epoch, whether its loss was finite. A
        non-finite one (in any process) raises, or records where the loss diverged (``--nonfinite``)."""
        flags = torch.stack(finite).tolist() if finite else []
        first = next((checked + i for i, ok in enumerate(flags) if not ok), None)
        bad = self.ctx.all_sum([float(first is not None)])[0]
        if not bad:
            return
        if self.config.nonfinite == "error":
            kept = f"epoch {epoch}" if epoch else "none yet"
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite in epoch {epoch + 1} (by step {batch + 1}); "
                f"stopped. {self.nonfinite_advice(kept)}"
            )
        firsts = [b for b in self.ctx.gather(first) if b is not None]  # the earliest, over processes
        self.diverge("training loss", epoch, min(firsts) // self.optim.accumulate + 1)

    def diverge(self, what: str, epoch: int, step: int) -> None:
        """Record that ``what`` became NaN or infinite in epoch ``epoch`` (0-based) at optimiser step
        ``step`` (1-based, in the epoch); only the first time counts."""
        p = self.progress
        if p.diverged is None:
            p.diverged = {"what": what, "epoch": epoch + 1, "step": step, "nonfinite": self.config.nonfinite}

    def nonfinite_advice(self, kept: str) -> str:
        where = f" in {self.run.path}" if self.run is not None else ""
        return (
            f"The last good checkpoint (after {kept}) is kept{where}; to train again, rerun with a lower "
            "--lr (or --grad-clip) and a new --output (or delete the run folder first)"
        )

    def check_trained_state(self, val: dict[str, float] | None) -> None:
        """After an epoch: the trained weights and the validation loss must be finite (an update on the last
        step can blow up the weights without any training loss showing it)."""
        finite = all(bool(torch.isfinite(p).all()) for p in self.params)
        if val is not None:
            finite = finite and math.isfinite(val["loss"])
        if not self.ctx.all_sum([float(not finite)])[0]:
            return
        epoch = self.progress.epoch
        if self.config.nonfinite != "error":
            self.diverge("trained weights or validation loss", epoch, self.steps_per_epoch)
            return
        kept = f"epoch {epoch}" if epoch else "none yet"
        raise NonFiniteLossError(
            f"the trained weights or the validation loss became NaN or infinite in epoch {epoch + 1}; "
            f"stopped. {self.nonfinite_advice(kept)}"
        )

    @contextlib.contextmanager
    def kept_weights(self):
        """Inside, the trained tensors hold the weights a run validates, selects and keeps: the EMA's with
        ``--ema`` (the trained values come back after), else the trained ones."""
        if self.ema is None:
            yield
            return
        trained = [p.detach().clone() for p in self.params]
        copy_into(self.params, self.ema.module.parameters())
        try:
            yield
        finally:
            copy_into(self.params, trained)

    def watch(self, val: dict[str, float]) -> None:
        """Early stopping: count validations without improvement; stop after ``--early-stop`` of them."""
        cfg, p = self.config, self.progress
        score = val["accuracy"] if cfg.early_stop_metric == "val_accuracy" else -val["loss"]
        if score > p.watched_best:
            p.watched_best, p.watched_epoch, p.stale_validations = score, p.epoch + 1, 0
        else:
            p.stale_validations += 1
        if p.stale_validations >= cfg.early_stop:
            p.stopped_epoch = p.epoch + 1

    def early_stop_line(self) -> str:
        """The log line of a run that early stopping ended (after its last epoch's line)."""
        cfg, p = self.config, self.progress
        best = p.watched_best if cfg.early_stop_metric == "val_accuracy" else -p.watched_best
        times = "validation" if cfg.early_stop == 1 else "validations"
        return (
            f"early stop: {cfg.early_stop_metric} did not improve for {cfg.early_stop} {times} (best "
            f"{best:.4g} after epoch {p.watched_epoch}); stopped after epoch {p.stopped_epoch} of {self.optim.epochs}"
        )

    def tricks_summary(self) -> dict[str, Any]:
        """How augmentation, mixup, accumulation, the EMA and early stopping shaped the run (its summary)."""
        cfg, p = self.config, self.progress
        early_stop = None
        if cfg.early_stop is not None:
            best = p.watched_best if cfg.early_stop_metric == "val_accuracy" else -p.watched_best
            early_stop = {
                "patience": cfg.early_stop,
                "metric": cfg.early_stop_metric,
                "stopped_epoch": p.stopped_epoch,  # None: it ran all its epochs
                "best_epoch": p.watched_epoch,
                "best": best,
            }
        mixup = ["mixup", "cutmix", "mixup_prob", "label_smoothing"]
        return {
            "train_randomness": self.data.plan.randomness,
            "mixup": {k: getattr(cfg, k) for k in mixup} if self.mixer is not None else None,
            "accumulate": self.optim.accumulate,
            "effective_batch_size": effective_batch(self.optim),
            "ema": {"decay": cfg.ema, "kept": "the EMA weights: validated, selected, saved, tested"}
            if self.ema is not None
            else None,
            "early_stop": early_stop,
        }

    def evaluate(self, dataset, keep: bool = False) -> dict[str, Any]:
        if self.val_cache is not None and dataset is self.data.val:
            batches = self.val_cache.loader(self.eval_batch, self.ctx)
            result = evaluate(self.model, batches, self.ctx, self.precision, self.val_cache.site, keep)
        else:
            loader = eval_loader(dataset, self.eval_batch, self.ctx, self.config.workers)
            result = evaluate(self.model, loader, self.ctx, self.precision, keep=keep)
        self.progress.images_evaluated += result["images"]
        self.progress.eval_seconds += result["images"] / result["images_per_second"]
        return result

    def fit(self) -> Progress:
        """Train the remaining epochs, validating and checkpointing after each; returns the progress."""
        cfg, p = self.config, self.progress
        running = p.epoch < self.until and p.stopped_epoch is None and not self.stopping
        if running:
            self.build_caches()
            if self.train_cache is not None and p.epoch == 0:  # a resumed run counted it already
                p.train_seconds += self.cache_summary()["build_seconds"]
        speak = self.ctx.main and not cfg.quiet
        if speak and cfg.cache == "auto" and self.train_cache is None and self.random_inputs():
            print(f"vprompt: frozen-prefix cache off: {self.cache_note}", file=sys.stderr)
        bar = None
        if speak and cfg.progress:
            from tqdm.auto import tqdm

            per_epoch = self.batches_per_epoch
            bar = tqdm(  # disable=None: tqdm draws no bar where its stream (stderr) is not a terminal
                total=self.optim.epochs * per_epoch, initial=p.epoch * per_epoch, unit="batch", disable=None
            )
            if bar.disable:
                bar = None
        try:
            while p.epoch < self.until and p.stopped_epoch is None and not self.stopping:
                if bar is not None:
                    bar.set_description(f"epoch {p.epoch + 1}/{self.optim.epochs}")
                try:
                    row = {"epoch": p.epoch + 1, **self.train_epoch(bar)}
                except Diverged:
                    break
                p.train_seconds += row["epoch_seconds"]
                last = p.epoch + 1 == self.optim.epochs
                val = None
                if self.data.val is not None and ((p.epoch + 1) % cfg.eval_every == 0 or last):
                    with self.kept_weights():
                        val = self.evaluate(self.data.val)
                    row |= {"val_accuracy": val["accuracy"], "val_loss": val["loss"]}
                self.check_trained_state(val)
                if val is not None and cfg.selection == "best-val" and val["accuracy"] > p.best_accuracy:
                    p.best_accuracy, p.best_epoch = val["accuracy"], p.epoch + 1
                    with self.kept_weights():
                        p.best_state = copy.deepcopy(self.model.trainable_state_dict())
                if val is not None and cfg.early_stop is not None:
                    self.watch(val)
                if self.stopping:  # the weights diverged in the epoch's last update: it ends unrecorded
                    break
                p.metrics.append(json_values(row))  # --nonfinite continue: NaN is no JSON value
                p.epoch += 1
                lines = [epoch_line(row, self.optim.epochs)]
                if p.stopped_epoch is not None:
                    lines.append(self.early_stop_line())
                for line in lines:
                    if bar is not None:
                        bar.write(line)
                    elif speak:
                        print(line, flush=True)
                self.tracker.epoch(row, p.updates)
                if self.run is not None:
                    state = self.state()  # every process takes part (RNG states are gathered)
                    if self.ctx.main:
                        self.run.save_checkpoint(state)
                        self.run.write_metrics(p.metrics)
                self.ctx.barrier()
        finally:
            if bar is not None:
                bar.close()
        return p

    def select(self) -> int:
        """Load the kept weights (the last epoch's, or the best on validation; the EMA's with ``--ema``);
        returns their epoch."""
        p = self.progress
        if self.config.selection == "best-val" and p.best_state is not None:
            self.model.load_trainable_state_dict(p.best_state)
            return p.best_epoch
        if self.ema is not None:
            copy_into(self.params, self.ema.module.parameters())
        return p.epoch


@torch.no_grad()
def copy_into(params: list[nn.Parameter], values) -> None:
    for param, value in zip(params, values, strict=True):
        param.copy_(value)


def json_values(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with NaN/inf floats as ``None`` (a diverged run's values; JSON has no NaN)."""
    return {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()}


def epoch_line(row: dict, epochs: int) -> str:
    """One readable log line for a finished epoch (what ``vprompt train`` prints)."""
    width = len(str(epochs))
    parts = [
        f"epoch {row['epoch']:>{width}}/{epochs}",
        f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:5.1f}%",
    ]
    if "val_accuracy" in row:
        parts.append(f"val acc {row['val_accuracy']:5.1f}% loss {row['val_loss']:.4f}")
    parts += [
        f"lr {row['lr']:.3g}",
        f"{row['train_images_per_second']:.0f} img/s",
        f"{row['epoch_seconds']:.1f} s",
    ]
    return "  ".join(parts)
