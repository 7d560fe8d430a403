"""The GPU check: vprompt's CUDA paths proven correct, then measured, in a few minutes on one GPU.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out gpu-check            # on a GPU, < 8 minutes
    PYTHONPATH=src python3 benchmarks/gpu_check.py --out /tmp/gc --device cpu --tiny   # dry run, < 2 min

Needs only PyTorch, timm and peft (and what they install: torchvision, numpy, pillow, pyyaml,
safetensors); no network, random weights, synthetic data. Works from the source tree with the
machine's own torch (2.11 or later). Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``
after every task, so an interrupted check still leaves what it measured.

Parts (``--parts`` picks some):

1. ``correctness`` — for ap, vpt-deep, vapt, lora, norm on a small ViT, N optimisation steps through
   the training engine: the weight updates in fp32 on the device against the CPU; bf16 autocast against
   fp32; fp16 with the gradient scaler and gradient clipping (no NaN; against fp32 with the same
   clipping, which fails if clipping saw scaled gradients); the frozen-prefix cache against the
   uncached run; the DDP code path in a one-process NCCL group (gloo on a CPU) against the plain run.
   Dropout is off so runs on different devices draw nothing random. TF32 is off for fp32 comparisons.
2. ``speed`` — ViT-B/16 at 224 px, batch 64 and 128, the run's precision (bf16 on a GPU): train-step
   time, images/s and CUDA peak memory (reset per method) for every method, AP at three depths.
3. ``epoch`` — a training epoch of 1,000 synthetic images with and without the prefix cache (AP at
   ``block.9``, linear), second epoch of two, through ``vprompt.train``.
4. ``loader`` — the data loader's images/s on VTAB-1k-like JPEG files (500×375, decoded and resized
   to 224 px) with 0, 2, 4, 8 … workers: whether a VTAB-1k epoch is bound by the GPU or by decoding.
5. ``compile`` — train steps with and without ``torch.compile`` (the first step, which compiles, apart).

``--budget-s``: each part prints its elapsed time; a task is not started when the time left is less
than the task is expected to take (its estimate, else the longest task of its part so far), and a task
still running at the limit is interrupted; the script then writes what it has and exits 0. The exit
status is 1 when a check failed or a task raised an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

PARTS = ("correctness", "speed", "epoch", "loader", "compile")
#: seconds kept back at the end of the budget for writing the results
WRITE_MARGIN_S = 2.0


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """What the check runs; :data:`TINY` is the CPU dry run's."""

    small: str = "vit_small_patch16_224"  # correctness
    small_size: int = 112
    small_batch: int = 16
    steps: int = 6
    lr: float = 0.01
    big: str = "vit_base_patch16_224"  # speed, epoch, compile
    big_size: int = 224
    batches: tuple[int, ...] = (64, 128)
    timed_steps: int = 10
    warmup: int = 3
    ap_sites: tuple[str, ...] = ("block.3", "block.9", "block.11")
    epoch_images: int = 1000
    epoch_batch: int = 64
    loader_images: int = 512
    loader_image_size: tuple[int, int] = (500, 375)
    loader_batch: int = 64
    loader_workers: tuple[int, ...] = (0, 2, 4, 8, 16)
    compile_backend: str = "inductor"
    compile_batch: int = 128
    compile_methods: tuple[str, ...] = ("ap:site=block.9", "full")
    compile_estimate_s: float = 120.0


TINY = Settings(
    small="vit_tiny_patch16_224",
    small_size=32,
    small_batch=8,
    steps=3,
    big="vit_tiny_patch16_224",
    big_size=32,
    batches=(4, 8),
    timed_steps=2,
    warmup=1,
    epoch_images=64,
    epoch_batch=16,
    loader_images=32,
    loader_image_size=(64, 48),
    loader_batch=8,
    loader_workers=(0, 2),
    compile_backend="eager",  # exercises dynamo's capture of the hooks without minutes of CPU codegen
    compile_batch=4,
    compile_methods=("ap:site=block.9",),
    compile_estimate_s=30.0,
)

#: the methods of the correctness part, dropout off (runs on two devices must draw nothing random)
CORRECTNESS_METHODS = {
    "ap": {"site": "block.5"},
    "vpt-deep": {"dropout": 0.0},
    "vapt": {"dropout": 0.0},
    "lora": {},
    "norm": {},
}
#: tolerances of the correctness checks: relative difference of the weight updates (and of the losses)
TOLERANCES = {
    "device_vs_cpu": (1e-3, 1e-4),  # fp32, TF32 off: summation order only
    "bf16_vs_fp32": (0.1, 0.02),  # 8-bit mantissa: about 0.4% per rounding, a few roundings deep
    "fp16_vs_fp32": (0.1, 0.02),  # with the gradient scaler and clipping, against fp32 with clipping
    "cached_fp32": (1e-4, 1e-5),
    "cached_mixed": (0.05, 0.01),  # cache built in other batch shapes: other bf16 kernels
    "ddp_vs_plain": (1e-6, 1e-6),
}
#: AP three quarters deep in the 12-block ViTs this check uses, for the cache check
CACHE_SITE = "block.8"
SPEED_METHODS = ("linear", "full", "ap", "vpt-shallow", "vpt-deep", "vapt", "lora", "adapter", "norm")
SPEED_METHODS_AFTER = ("bitfit", "vp-pad")
GRAD_CLIP = 1.0


# ------------------------------------------------------------------------------------------ budget
class BudgetExceeded(BaseException):
    """The ``--budget-s`` limit was reached while a task ran (a BaseException: tasks do not catch it)."""


class Budget:
    """Time left of ``limit_s`` (``None``: no limit), on ``clock``; :meth:`arm` interrupts at the limit."""

    def __init__(self, limit_s: float | None, clock: Callable[[], float] = time.monotonic):
        self.limit, self.clock, self.start = limit_s, clock, clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return math.inf if self.limit is None else self.limit - self.elapsed()

    def arm(self) -> None:
        """Raise :class:`BudgetExceeded` in the main thread when the limit (less the write margin) is
        hit. Not armed when no time is left: then no task starts at all."""
        if self.limit is None or self.left() <= WRITE_MARGIN_S:
            return

        def interrupt(signum, frame):
            raise BudgetExceeded()

        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, max(1e-3, self.left() - WRITE_MARGIN_S))

    def disarm(self) -> None:
        if self.limit is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)


@dataclass
class Checker:
    """Runs the tasks of each part within the budget and keeps the results (rewritten after each task)."""

    out: Path | None
    budget: Budget
    meta: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    stopped: str | None = None

    def task(self, part: str, name: str, fn: Callable[[], Any], estimate: float | None = None) -> Any:
        """``fn()``'s value, or ``None`` when it was skipped (budget), interrupted or raised an error."""
        record = self.parts.setdefault(part, {"tasks": [], "seconds": 0.0})
        done = [t["seconds"] for t in record["tasks"] if "seconds" in t]
        guess = estimate if estimate is not None else max(done, default=0.0)
        usable = self.budget.left() - WRITE_MARGIN_S
        if self.stopped is None and usable < guess:
            self.stopped = (
                f"budget: {max(0.0, usable):.1f} s left before {part}/{name} (needs ~{guess:.1f} s)"
            )
        if self.stopped is not None:
            record["tasks"].append({"name": name, "status": "skipped", "note": self.stopped})
            self.write()
            return None
        entry: dict[str, Any] = {"name": name}
        value, start = None, self.budget.clock()
        try:
            value = fn()
            entry["status"] = "ok"
        except BudgetExceeded:
            entry["status"] = "interrupted"
            self.stopped = f"budget: {part}/{name} was interrupted at the limit"
        except Exception as e:  # noqa: BLE001 - one failing task must not cost the other measurements
            entry["status"] = "error"
            entry["note"] = f"{type(e).__name__}: {e}"[:500]
            entry["traceback"] = traceback.format_exc()[-3000:]
        entry["seconds"] = self.budget.clock() - start
        if value is not None:
            entry["value"] = value
        record["tasks"].append(entry)
        record["seconds"] += entry["seconds"]
        note = f" ({entry['note']})" if "note" in entry else ""
        print(
            f"  [{part}] {name}: {entry['status']} in {entry['seconds']:.1f} s "
            f"(total {self.budget.elapsed():.0f} s){note}",
            flush=True,
        )
        self.write()
        return value

    # --------------------------------------------------------------------------------- results
    def values(self, part: str) -> list[Any]:
        return [t["value"] for t in self.parts.get(part, {}).get("tasks", []) if "value" in t]

    def checks(self) -> list[dict[str, Any]]:
        return [c for v in self.values("correctness") for c in v.get("checks", [])]

    def failed(self) -> bool:
        tasks = [t for p in self.parts.values() for t in p["tasks"]]
        return any(t["status"] == "error" for t in tasks) or not all(c["pass"] for c in self.checks())

    def result(self) -> dict[str, Any]:
        return {
            **self.meta,
            "budget": {
                "limit_s": self.budget.limit,
                "elapsed_s": self.budget.elapsed(),
                "stopped": self.stopped,
            },
            "checks_passed": all(c["pass"] for c in self.checks()),
            "parts": self.parts,
        }

    def write(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        result = self.result()
        for name, text in (
            ("gpu_check.json", json.dumps(result, indent=2) + "\n"),
            ("gpu_check.md", markdown(result)),
        ):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


# ------------------------------------------------------------------------------------ environment
def versions(device: torch.device) -> dict[str, Any]:
    """What this machine has (every optional import guarded: the check must start anywhere)."""
    found: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "peft", "torchvision", "numpy", "transformers"):
        try:
            found[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - report, do not fail
            found[name] = f"missing ({type(e).__name__})"
    found["cuda"] = torch.version.cuda
    found["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info = {"versions": found, "host": platform.node(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device"] = {
            "type": "cuda",
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(),
        }
    else:
        info["device"] = {"type": "cpu", "name": platform.processor() or platform.machine()}
    info["device"]["threads"] = torch.get_num_threads()
    return info


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for fp32 comparisons (cuDNN convolutions use it by default)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_context(device: torch.device):
    """The engine's process context, marked distributed, for a one-process group: the trainer then
    takes its DDP path (DistributedDataParallel, all-reduces, gathers) with one NCCL (gloo) process."""
    from vprompt.engine.distributed import Context

    class OneProcessGroup(Context):
        @property
        def distributed(self) -> bool:
            return True

    return OneProcessGroup(rank=0, world=1, device=device)


@contextlib.contextmanager
def one_process_group(device: torch.device):
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield group_context(device), backend
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ correctness
def engine_run(
    s: Settings,
    device: torch.device,
    method: str,
    options: dict,
    precision: str,
    cache: str = "off",
    grad_clip: float | None = None,
    ctx=None,
) -> dict[str, Any]:
    """``s.steps`` optimisation steps (one per epoch, so each epoch's loss is one step's) through the
    engine's Trainer; returns the weight updates (on the CPU, float32), the losses and what ran."""
    from vprompt.engine.config import DataOptions, LoopOptions, OptimOptions, check_config
    from vprompt.engine.distributed import Context
    from vprompt.engine.run import as_config, build_model
    from vprompt.engine.run_data import load_data, plan_data
    from vprompt.engine.trainer import Trainer

    config = as_config(
        {},
        dict(
            backbone=s.small,
            random_init=True,
            img_size=s.small_size,
            method=method,
            method_options=dict(options),
            data=f"synthetic:4x{s.small_size}",
            train_size=s.small_batch,
            val_split="none",
            test_split="none",
            epochs=s.steps,
            batch_size=s.small_batch,
            lr=s.lr,
            grad_clip=grad_clip,
            precision=precision,
            cache=cache,
            device=str(device),
            progress=False,
        ),
    )
    check_config(config)
    plan = plan_data(config.section(DataOptions))
    model = build_model(config, plan.info.num_classes)
    data = load_data(
        config.section(DataOptions), plan, model.backbone.data_config, model.num_classes, config.seed
    )
    before = {k: v.float().cpu() for k, v in model.trainable_state_dict().items()}
    torch.manual_seed(config.seed)
    loop, optim = config.section(LoopOptions), config.section(OptimOptions)
    trainer = Trainer(model, data, loop, optim, ctx or Context(device=device), None)
    scaler = trainer.precision.scaler
    initial_scale = scaler.get_scale() if scaler is not None else None
    progress = trainer.fit()
    after = {k: v.float().cpu() for k, v in model.trainable_state_dict().items()}
    return {
        "delta": {k: after[k] - before[k] for k in after},
        "losses": [m["train_loss"] for m in progress.metrics],
        "precision": trainer.precision.name,
        "scale": scaler.get_scale() if scaler is not None else None,
        # the scaler halves its scale at every step it skips (inf/NaN gradients); it grows only
        # after 2,000 good steps, so over a few steps the halvings count the skipped steps
        "skipped": round(math.log2(initial_scale / scaler.get_scale())) if scaler is not None else 0,
        "cache": trainer.cache_summary(),
        "ddp": type(trainer.forward_model).__name__ == "DistributedDataParallel",
    }


def compare(name: str, a: dict, b: dict, tolerance: tuple[float, float]) -> dict[str, Any]:
    """Relative difference of the weight updates ``‖Δa − Δb‖ / ‖Δb‖`` and the largest relative loss
    difference, against ``tolerance``; non-finite values fail."""
    keys = sorted(b["delta"])
    if sorted(a["delta"]) != keys:
        raise ValueError(f"{name}: the runs trained different tensors")
    diff = math.sqrt(sum(float((a["delta"][k] - b["delta"][k]).double().pow(2).sum()) for k in keys))
    norm = math.sqrt(sum(float(b["delta"][k].double().pow(2).sum()) for k in keys))
    rel = diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
    losses = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a["losses"], b["losses"], strict=True)]
    loss_rel = max(losses, default=0.0)
    finite = all(math.isfinite(x) for x in a["losses"]) and all(
        bool(torch.isfinite(v).all()) for v in a["delta"].values()
    )
    ok = finite and norm > 0 and rel <= tolerance[0] and loss_rel <= tolerance[1]
    return {
        "name": name,
        "update_rel_diff": rel,
        "loss_rel_diff": loss_rel,
        "tolerance": list(tolerance),
        "finite": finite,
        "pass": bool(ok),
    }


def correctness_method(
    s: Settings, device: torch.device, method: str, options: dict, keep: dict
) -> dict[str, Any]:
    """fp32 on the device vs the CPU, bf16 vs fp32, fp16 with the scaler and clipping vs fp32 with
    clipping; the plain fp32 run is kept in ``keep[method]`` (the DDP check compares with it)."""
    cpu = torch.device("cpu")
    with exact_fp32():
        ref = engine_run(s, cpu, method, options, "fp32")
        fp32 = engine_run(s, device, method, options, "fp32")
        fp32_clip = engine_run(s, device, method, options, "fp32", grad_clip=GRAD_CLIP)
    mixed = engine_run(s, device, method, options, "bf16")
    fp16 = engine_run(s, device, method, options, "fp16", grad_clip=GRAD_CLIP)
    checks = [
        compare(f"{method}: fp32 {device.type} vs cpu", fp32, ref, TOLERANCES["device_vs_cpu"]),
        compare(f"{method}: bf16 autocast vs fp32", mixed, fp32, TOLERANCES["bf16_vs_fp32"]),
        compare(
            f"{method}: fp16 + GradScaler + clip {GRAD_CLIP} vs fp32 + clip",
            fp16,
            fp32_clip,
            TOLERANCES["fp16_vs_fp32"],
        ),
    ]
    scaled = checks[-1]
    scaled |= {"scale": fp16["scale"], "skipped_steps": fp16["skipped"]}
    if fp16["skipped"]:  # a skipped step is the scaler's job (fp16 overflow), but then the runs differ
        scaled["compared"] = False
        scaled["pass"] = scaled["finite"] and fp16["scale"] > 0
    else:
        scaled["compared"] = True
    keep[method] = fp32
    return {"method": method, "options": options, "checks": checks}


def correctness_cache(s: Settings, device: torch.device, method: str, options: dict) -> dict[str, Any]:
    checks, caches = [], []
    for precision, key in (("fp32", "cached_fp32"), ("bf16", "cached_mixed")):
        with exact_fp32() if precision == "fp32" else contextlib.nullcontext():
            plain = engine_run(s, device, method, options, precision, cache="off")
            cached = engine_run(s, device, method, options, precision, cache="memory")
        check = compare(
            f"{method}: cached vs uncached ({cached['precision']})", cached, plain, TOLERANCES[key]
        )
        check["pass"] = check["pass"] and cached["cache"]["site"] is not None
        checks.append(check)
        caches.append(cached["cache"])
    return {"method": method, "options": options, "checks": checks, "cache": caches}


def correctness_ddp(
    s: Settings, device: torch.device, method: str, options: dict, plain: dict | None
) -> dict[str, Any]:
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    with exact_fp32():
        if plain is None:
            plain = engine_run(s, device, method, options, "fp32")
        with one_process_group(device) as (ctx, backend):
            ddp = engine_run(s, device, method, options, "fp32", ctx=ctx)
    check = compare(f"{method}: DDP, one {backend} process, vs plain", ddp, plain, TOLERANCES["ddp_vs_plain"])
    check["pass"] = check["pass"] and ddp["ddp"]
    return {"method": method, "options": options, "checks": [check]}


def part_correctness(checker: Checker, s: Settings, device: torch.device) -> None:
    plain: dict[str, dict] = {}
    for method, options in CORRECTNESS_METHODS.items():
        checker.task(
            "correctness", method, lambda m=method, o=options: correctness_method(s, device, m, o, plain)
        )
    for method, options in (("ap", {"site": CACHE_SITE}), ("linear", {})):
        checker.task(
            "correctness",
            f"cache {method}",
            lambda m=method, o=options: correctness_cache(s, device, m, o),
        )
    for method in ("ap", "vpt-deep"):
        options = CORRECTNESS_METHODS[method]
        checker.task(
            "correctness",
            f"ddp {method}",
            lambda m=method, o=options: correctness_ddp(s, device, m, o, plain.get(m)),
        )


# ------------------------------------------------------------------------------------------ speed
def speed_methods(s: Settings) -> list[tuple[str, dict]]:
    methods = []
    for name in SPEED_METHODS:
        if name == "ap":
            methods += [("ap", {"site": site}) for site in s.ap_sites]
        else:
            methods.append((name, {}))
    return methods + [(name, {}) for name in SPEED_METHODS_AFTER]


def measure_row(s: Settings, device: torch.device, method: str, options: dict, batch: int, **extra) -> dict:
    from vprompt.tools.bench import measure

    row = measure(
        s.big,
        method,
        dict(options),
        batch=batch,
        img_size=s.big_size,
        steps=s.timed_steps,
        warmup=s.warmup,
        device=str(device),
        **extra,
    )
    return row


def part_speed(checker: Checker, s: Settings, device: torch.device) -> None:
    for batch in s.batches:
        for method, options in speed_methods(s):
            name = method + (f"({options['site']})" if "site" in options else "")
            checker.task(
                "speed",
                f"{name} batch {batch}",
                lambda m=method, o=options, b=batch: measure_row(s, device, m, o, b),
            )


def part_epoch(checker: Checker, s: Settings, device: torch.device) -> None:
    from vprompt.tools.bench import epoch_times

    classes = -(-s.epoch_images // 16)  # synthetic data: 16 training images per class
    data = f"synthetic:{classes}x{s.big_size}"
    for method, options in (("ap", {"site": "block.9"}), ("linear", {})):
        checker.task(
            "epoch",
            method + (f"({options['site']})" if options else ""),
            lambda m=method, o=options: {
                "method": m,
                "options": o,
                **epoch_times(
                    s.big,
                    m,
                    dict(o),
                    s.big_size,
                    s.epoch_images,
                    pretrained=False,
                    data=data,
                    device=str(device),
                    batch=s.epoch_batch,
                ),
            },
        )


def part_compile(checker: Checker, s: Settings, device: torch.device) -> None:
    from vprompt.tools.bench import parse_methods

    for method, options in parse_methods(",".join(s.compile_methods)):
        name = method + (f"({options['site']})" if "site" in options else "")

        def run(m=method, o=options):
            eager = measure_row(s, device, m, o, s.compile_batch)
            torch._dynamo.reset()
            compiled = measure_row(s, device, m, o, s.compile_batch, compile_backend=s.compile_backend)
            torch._dynamo.reset()
            return {
                "method": m,
                "options": o,
                "batch": s.compile_batch,
                "backend": s.compile_backend,
                "eager_step_seconds": eager["step_seconds"]["median"],
                "compiled_step_seconds": compiled["step_seconds"]["median"],
                "compile_first_step_seconds": compiled["first_step_seconds"],
                "speedup": eager["step_seconds"]["median"] / compiled["step_seconds"]["median"],
                "eager_peak_memory_mib": eager["peak_memory_mib"],
                "compiled_peak_memory_mib": compiled["peak_memory_mib"],
            }

        checker.task("compile", name, run, estimate=s.compile_estimate_s)


# ----------------------------------------------------------------------------------------- loader
def write_jpegs(root: Path, count: int, size: tuple[int, int], task: str = "dtd") -> None:
    """A VTAB-1k-like task folder: ``count`` JPEG photos-to-be (smooth colour fields plus noise, which
    decode like photographs) listed in ``train800.txt`` (and the other split files, reusing them)."""
    import numpy as np
    from PIL import Image

    folder = root / task / "images" / "train800"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    lines = []
    for i in range(count):
        a = rng.random((3, 3))
        base = np.stack(
            [a[c, 0] + a[c, 1] * np.sin(6 * xx + c) + a[c, 2] * np.cos(5 * yy) for c in range(3)], -1
        )
        pixels = np.clip(80 * base + 40 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
        lines.append(f"images/train800/{i:06d}.jpg {i % 47}")
    for split in ("train800", "val200", "train800val200", "test"):
        (root / task / f"{split}.txt").write_text("\n".join(lines) + "\n")


def loader_rate(dataset, batch: int, workers: int | None, device: torch.device) -> dict[str, Any]:
    """Images/s of one pass of the engine's training loader, batches copied to ``device``."""
    from vprompt.engine.distributed import Context, synchronize
    from vprompt.engine.run_data import loader_options, train_loader

    loader, _ = train_loader(dataset, batch, 0, workers, Context(device=device), augments=False)
    start = time.perf_counter()
    seen = 0
    for x, _y in loader:
        x.to(device, non_blocking=True)
        seen += len(x)
    synchronize(device)
    seconds = time.perf_counter() - start
    used = loader_options(dataset, workers, device)
    return {
        "workers": used["num_workers"],
        "default": workers is None,
        "images": seen,
        "seconds": seconds,
        "images_per_second": seen / seconds,
    }


def part_loader(checker: Checker, s: Settings, device: torch.device) -> None:
    import vprompt
    from vprompt import data as vdata

    folder = Path(tempfile.mkdtemp(prefix="vprompt-gpu-check-"))
    try:
        state: dict[str, Any] = {}

        def prepare():
            write_jpegs(folder, s.loader_images, s.loader_image_size)
            bb = vprompt.backbone(s.big, pretrained=False, num_classes=47, img_size=s.big_size)
            state["dataset"] = vdata.load(
                "vtab1k:dtd", folder, "train", bb.data_config, protocol="vtab", train=True
            )
            return {
                "images": s.loader_images,
                "image_size": list(s.loader_image_size),
                "input_size": s.big_size,
            }

        if checker.task("loader", "write JPEGs", prepare) is None:
            return
        cpus = os.cpu_count() or 1
        counts = [w for w in s.loader_workers if w < cpus] + [None]  # None: the engine's default
        for workers in counts:
            name = "default workers" if workers is None else f"{workers} workers"
            checker.task(
                "loader", name, lambda w=workers: loader_rate(state["dataset"], s.loader_batch, w, device)
            )
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------- markdown
def _ok(task: dict) -> bool:
    return task["status"] == "ok" and "value" in task


def _method(value: dict) -> str:
    options = value.get("options") or {}
    return value["method"] + (f" ({options['site']})" if "site" in options else "")


def markdown(result: dict[str, Any]) -> str:
    parts = result["parts"]
    dev, budget = result.get("device", {}), result["budget"]
    vers = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    lines = [
        "# vprompt GPU check",
        "",
        f"Command: `{result.get('command', '')}` · {result.get('date', '')} · host {result.get('host', '')}",
        "",
        f"Device: {dev.get('name')} ({dev.get('type')}"
        + (
            f", capability {dev['capability']}, {dev['memory_gib']} GiB, bf16 {dev['bf16']}"
            if "capability" in dev
            else ""
        )
        + f"), {result.get('cpus')} CPUs, {dev.get('threads')} threads · versions: {vers}",
        "",
        f"Budget: {budget['limit_s']} s, used {budget['elapsed_s']:.0f} s"
        + (f" — **stopped: {budget['stopped']}**" if budget["stopped"] else " — finished"),
        "",
    ]

    def tasks(name):
        return parts.get(name, {}).get("tasks", [])

    def header(number, name, title):
        seconds = parts.get(name, {}).get("seconds", 0.0)
        lines.extend([f"## {number}. {title} ({seconds:.0f} s)", ""])

    if "correctness" in parts:
        st = result.get("settings", {})
        title = f"{st.get('small')} at {st.get('small_size')} px, {st.get('steps')} steps of batch {st.get('small_batch')}"
        header(1, "correctness", f"Correctness ({title})")
        lines += [
            "| check | update rel. diff | loss rel. diff | tolerance (update, loss) | result |",
            "|---|---|---|---|---|",
        ]
        for t in tasks("correctness"):
            for c in (t.get("value") or {}).get("checks", []):
                extra = f", scale {c['scale']:.0f}" if c.get("scale") else ""
                if c.get("skipped_steps"):
                    extra += f", {c['skipped_steps']} step(s) skipped on overflow: finite, not compared"
                lines.append(
                    f"| {c['name']} | {c['update_rel_diff']:.2e} | {c['loss_rel_diff']:.2e} "
                    f"| {c['tolerance'][0]:g}, {c['tolerance'][1]:g} | {'pass' if c['pass'] else '**FAIL**'}{extra} |"
                )
        lines.append("")
    if "speed" in parts:
        rows = [t["value"] for t in tasks("speed") if _ok(t)]
        cuda = any(r["device"].startswith("cuda") for r in rows)
        memory = "CUDA peak MiB" if cuda else "peak RSS MiB"
        precision = ", ".join(sorted({r["precision"] for r in rows}))
        header(2, "speed", f"Speed and memory ({result.get('settings', {}).get('big')}, {precision})")
        lines += [
            f"| method | batch | step ms (q1–q3) | train img/s | {memory} | above model MiB | infer img/s | trainable |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            q = r["step_seconds"]
            above = "-" if r["memory_above_model_mib"] is None else f"{r['memory_above_model_mib']:.0f}"
            lines.append(
                f"| {_method(r)} | {r['batch']} | {1e3 * q['median']:.1f} ({1e3 * q['q1']:.1f}–{1e3 * q['q3']:.1f}) "
                f"| {r['train_images_per_second']:.0f} | {r['peak_memory_mib']:.0f} | {above} "
                f"| {r['inference_images_per_second']:.0f} | {r['trainable_parameters']:,} |"
            )
        lines.append("")
    if "epoch" in parts:
        header(3, "epoch", "Training epoch with and without the frozen-prefix cache (second of two)")
        lines += [
            "| method | images | uncached s | cached s | speed-up | cache build s | cache MiB, where |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in tasks("epoch"):
            if _ok(t):
                r, c = t["value"], t["value"]["cache"]
                lines.append(
                    f"| {_method(r)} | {r['epoch_images']} | {r['epoch_seconds_uncached']:.2f} | {r['epoch_seconds_cached']:.2f} "
                    f"| {r['epoch_seconds_uncached'] / r['epoch_seconds_cached']:.1f}× | {c.get('build_seconds', 0):.2f} "
                    f"| {c.get('mib', 0):.1f}, {c.get('device', '-')} |"
                )
        lines.append("")
    if "loader" in parts:
        header(4, "loader", "Data loader on JPEG files (decode + resize + normalise, pinned on a GPU)")
        first = next((t["value"] for t in tasks("loader") if _ok(t) and "image_size" in t["value"]), None)
        if first:
            w, h = first["image_size"]
            lines += [f"{first['images']} JPEG files of {w}×{h} px, resized to {first['input_size']} px.", ""]
        lines += ["| workers | images/s |", "|---|---|"]
        rates = [t["value"] for t in tasks("loader") if _ok(t) and "workers" in t["value"]]
        for r in rates:
            lines.append(
                f"| {r['workers']}{' (default)' if r['default'] else ''} | {r['images_per_second']:.0f} |"
            )
        default = next((r for r in rates if r["default"]), None)
        speed = [t["value"] for t in tasks("speed") if _ok(t)]
        if default and speed:
            batch = min(r["batch"] for r in speed)
            lines += [
                "",
                f"An uncached VTAB-1k epoch at batch {batch} with the default loader "
                f"({default['images_per_second']:.0f} img/s) is bound by (with the prefix cache, decoding "
                "happens once, when the cache is built):",
                "",
            ]
            for r in (r for r in speed if r["batch"] == batch):
                bound = (
                    "compute" if r["train_images_per_second"] < default["images_per_second"] else "decoding"
                )
                lines.append(f"- {_method(r)}: {r['train_images_per_second']:.0f} img/s training → {bound}")
        lines.append("")
    if "compile" in parts:
        header(5, "compile", "torch.compile")
        lines += [
            "| method | batch | backend | eager ms | compiled ms | speed-up | first (compiling) step s |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in tasks("compile"):
            if _ok(t):
                r = t["value"]
                lines.append(
                    f"| {_method(r)} | {r['batch']} | {r['backend']} | {1e3 * r['eager_step_seconds']:.1f} "
                    f"| {1e3 * r['compiled_step_seconds']:.1f} | {r['speedup']:.2f}× | {r['compile_first_step_seconds']:.1f} |"
                )
        lines.append("")
    lines += ["## Tasks", "", "| part | task | status | s | note |", "|---|---|---|---|---|"]
    for name, part in parts.items():
        for t in part["tasks"]:
            seconds = f"{t['seconds']:.1f}" if "seconds" in t else "-"
            note = t.get("note", "").replace("|", "/").replace("\n", " ")
            lines.append(f"| {name} | {t['name']} | {t['status']} | {seconds} | {note} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main
RUNNERS = {
    "correctness": part_correctness,
    "speed": part_speed,
    "epoch": part_epoch,
    "loader": part_loader,
    "compile": part_compile,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.{json,md}")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:1, cpu")
    p.add_argument("--tiny", action="store_true", help="ViT-Tiny at 32 px, a few steps: the CPU dry run")
    p.add_argument(
        "--budget-s", type=float, default=450.0, help="stop cleanly before this many seconds (default 450)"
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of: {','.join(PARTS)}")
    p.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (default: inductor; eager with --tiny)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 with --tiny)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads or args.tiny:  # the dry run checks code paths: one thread, robust on a busy CPU
        torch.set_num_threads(args.threads or 1)
    from vprompt.engine.distributed import resolve_device

    device = resolve_device(args.device)
    if device.type == "cpu":  # the dry run checks the bf16 code path on any CPU, emulated where need be
        os.environ.setdefault("VPROMPT_EMULATED_BF16", "1")
    s = TINY if args.tiny else Settings()
    if args.compile_backend:
        s = replace(s, compile_backend=args.compile_backend)
    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        **versions(device),
        "settings": {**asdict(s), "tiny": args.tiny, "parts": parts},
    }
    print(f"vprompt GPU check on {meta['device']['name']} ({device}); budget {args.budget_s:.0f} s")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), flush=True)
    checker = Checker(args.out, budget, meta)
    checker.write()
    try:
        budget.arm()
        for part in parts:
            start = budget.elapsed()
            print(f"== {part}", flush=True)
            try:
                RUNNERS[part](checker, s, device)
            except Exception as e:  # noqa: BLE001 - outside a task (an import, a set-up): record, go on
                record = checker.parts.setdefault(part, {"tasks": [], "seconds": 0.0})
                note = f"{type(e).__name__}: {e}"[:500]
                record["tasks"].append({"name": "(part)", "status": "error", "note": note})
                print(f"  [{part}] error outside a task: {note}", flush=True)
            print(f"== {part}: {budget.elapsed() - start:.1f} s (total {budget.elapsed():.0f} s)", flush=True)
    except BudgetExceeded:  # between tasks
        checker.stopped = checker.stopped or "budget: the limit was reached between tasks"
    finally:
        budget.disarm()
    checker.write()
    failed = checker.failed()
    print(
        f"done in {budget.elapsed():.0f} s; checks {'passed' if not failed else 'FAILED or errors'}"
        + (f"; {checker.stopped}" if checker.stopped else "")
        + f"; results in {args.out}/gpu_check.{{md,json}}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
