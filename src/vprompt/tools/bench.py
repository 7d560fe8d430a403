"""``vprompt bench``: what each method costs on one backbone.

For every method, in a fresh process (so that peak memory means something on a CPU): trainable
parameters (and % of the total), the train-step time (median and spread over repeated steps), peak
memory (the CUDA allocator's peak on a GPU, reset for each method; the peak resident set size on a
CPU, also given above the built model), inference throughput, and optionally the time of a training
epoch on synthetic images with and without the frozen-prefix cache. Steps run in the precision a
training run would use (``auto``: bf16 autocast on a GPU that has it, fp32 on a CPU), optionally
through ``torch.compile``.

Methods are given as ``name`` or ``name:option=value:option=value`` (``ap:site=block.9:shape=channel``);
``ap`` without a site is put three quarters deep.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

#: what ``vprompt bench`` compares unless told otherwise
DEFAULT_METHODS = "ap,vpt-deep,vapt,lora,norm,linear,full"


def parse_methods(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``"ap:site=block.9,linear"`` → ``[("ap", {"site": "block.9"}), ("linear", {})]``."""
    methods = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, *pairs = item.split(":")
        options: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"method option {pair!r} in {item!r} is not key=value")
            options[key] = _number(value)
        methods.append((name, options))
    return methods


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def rss_mib() -> float:
    """The current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def quartiles(values: list[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return {"median": median, "q1": q1, "q3": q3, "min": min(values), "n": len(values)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def three_quarters_site(backbone) -> str:
    blocks = [n for n in backbone.sites if n.startswith("block.")]
    return blocks[(3 * len(blocks)) // 4 - 1] if blocks else "pre_logits"


def time_steps(step, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def build(backbone: str, method: str, options: dict, img_size: int | None, pretrained: bool, device):
    import vprompt

    bb = vprompt.backbone(backbone, num_classes=10, img_size=img_size, pretrained=pretrained)
    if method in vprompt.methods.SITE_METHODS and "site" not in options:
        options = {**options, "site": three_quarters_site(bb)}
    torch.manual_seed(0)
    return vprompt.attach(bb, method, **options).to(device), options


def measure(
    backbone: str,
    method: str,
    options: dict,
    batch: int = 8,
    img_size: int | None = None,
    steps: int = 10,
    warmup: int = 3,
    pretrained: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    precision: str = "auto",
    compile_backend: str | None = None,
) -> dict[str, Any]:
    """Everything about one method, measured in this process (call it in a fresh one for memory on a
    CPU; on a GPU the allocator's peak is reset after the model is built, and what earlier calls left
    is freed first). ``compile_backend``: train through ``torch.compile(model, backend=...)``; the
    first warm-up step (which compiles) is reported as ``first_step_seconds``."""
    from ..engine.trainer import Precision

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    start_rss = rss_mib()
    model, options = build(backbone, method, options, img_size, pretrained, dev)
    built_rss = rss_mib()
    if dev.type == "cuda":
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        built_cuda = torch.cuda.memory_allocated(dev) / 2**20
    amp = Precision.choose(precision, dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *model.input_size, generator=g).to(dev)  # what the data pipeline delivers
    y = torch.randint(0, 10, (batch,), generator=g).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    model.train()
    forward = model if compile_backend is None else torch.compile(model, backend=compile_backend)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with amp.autocast():
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        if amp.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            amp.scaler.scale(loss).backward()
            amp.scaler.step(optimizer)
            amp.scaler.update()

    first = time_steps(train_step, 1, 0, dev)[0]
    step_times = time_steps(train_step, steps, max(0, warmup - 1), dev)
    if dev.type == "cuda":
        peak, above = torch.cuda.max_memory_allocated(dev) / 2**20, None
        above = peak - built_cuda
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        above = max(0.0, peak - built_rss)  # the two counters round differently by a few pages
    model.eval()

    def infer():
        with torch.no_grad(), amp.autocast():
            model(x)

    infer_times = time_steps(infer, steps, max(1, warmup // 2), dev)
    return {
        "method": method,
        "options": options,
        "trainable_parameters": model.trainable_parameters(),
        "trainable_parameters_without_head": model.trainable_parameters(head=False),
        "total_parameters": model.total_parameters(),
        "trainable_percent": 100.0 * model.trainable_parameters() / model.total_parameters(),
        "step_seconds": quartiles(step_times),
        "first_step_seconds": first,
        "train_images_per_second": batch / statistics.median(step_times),
        "peak_memory_mib": peak,
        "memory_above_model_mib": above,
        "model_mib": built_rss - start_rss if dev.type == "cpu" else None,
        "inference_images_per_second": batch / statistics.median(infer_times),
        "batch": batch,
        "input_size": list(model.backbone.input_size),
        "device": device,
        "precision": amp.name,
        "compile": compile_backend,
        "threads": torch.get_num_threads(),
    }


def epoch_times(
    backbone: str,
    method: str,
    options: dict,
    img_size: int,
    images: int,
    pretrained: bool,
    data: str | None = None,
    device: str = "auto",
    batch: int = 32,
    precision: str = "auto",
) -> dict:
    """Seconds of a training epoch on ``images`` images (synthetic unless ``data`` names a dataset),
    with the frozen-prefix cache (its build time reported apart) and without. The second of two epochs
    is timed."""
    import tempfile

    import vprompt
    from vprompt.engine.rundir import RunDir

    data = data or f"synthetic:{max(2, images // 16)}x{img_size}"
    result = {}
    for cache in ("off", "auto"):
        with tempfile.TemporaryDirectory() as out:
            summary = vprompt.train(
                backbone=backbone,
                random_init=not pretrained,
                img_size=img_size,
                method=method,
                method_options=options,
                data=data,
                train_size=images,
                val_split="none",
                epochs=2,
                batch_size=batch,
                cache=cache,
                device=device,
                precision=precision,
                progress=False,
                output=Path(out) / "run",
            )
            rows = RunDir(Path(out) / "run").read_metrics()
        key = "cached" if cache == "auto" else "uncached"
        result[f"epoch_seconds_{key}"] = rows[-1]["epoch_seconds"]
        if cache == "auto":
            result["cache"] = summary["cache"]
        result["epoch_images"] = summary["sizes"]["train"]
    return result


def measure_in_fresh_process(**kwargs) -> dict[str, Any]:
    """:func:`measure` in a new Python process (its peak RSS is the method's alone)."""
    code = "import json,sys; from vprompt.tools.bench import measure; print(json.dumps(measure(**json.loads(sys.argv[1]))))"
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark of {kwargs['method']} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench(
    backbone: str,
    methods: list[tuple[str, dict]],
    batch: int = 8,
    img_size: int | None = None,
    steps: int = 10,
    warmup: int = 3,
    pretrained: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    epoch_images: int = 0,
) -> list[dict[str, Any]]:
    """Measure every method (each in its own process); with ``epoch_images``, also epoch times."""
    rows = []
    for method, options in methods:
        row = measure_in_fresh_process(
            backbone=backbone,
            method=method,
            options=options,
            batch=batch,
            img_size=img_size,
            steps=steps,
            warmup=warmup,
            pretrained=pretrained,
            device=device,
            threads=threads,
        )
        if epoch_images:
            size = row["input_size"][-1]
            row |= epoch_times(
                backbone, method, row["options"], size, epoch_images, pretrained, device=device
            )
        rows.append(row)
    reference = next((r for r in rows if r["method"] == "linear"), None)
    for row in rows:
        if reference is not None:
            row["step_vs_linear"] = row["step_seconds"]["median"] / reference["step_seconds"]["median"]
    return rows


def label(row: dict) -> str:
    opts = ",".join(
        f"{k}={v}" for k, v in row["options"].items() if k in ("site", "shape", "r", "num_prompts")
    )
    return f"{row['method']}({opts})" if opts else row["method"]


def table(rows: list[dict]) -> str:
    """A markdown table of the measurements."""
    head = (
        "| method | trainable | % | step ms (q1–q3) | × linear | peak MiB | above model MiB | infer img/s |"
    )
    lines = [head, "|" + "---|" * 8]
    epochs = any("epoch_seconds_uncached" in r for r in rows)
    if epochs:
        lines[0] += " epoch s (cached / uncached) |"
        lines[1] += "---|"
    for r in rows:
        s = r["step_seconds"]
        ratio = f"{r['step_vs_linear']:.2f}" if "step_vs_linear" in r else "-"
        above = "-" if r["memory_above_model_mib"] is None else f"{r['memory_above_model_mib']:.0f}"
        line = (
            f"| {label(r)} | {r['trainable_parameters']:,} | {r['trainable_percent']:.3f} "
            f"| {1e3 * s['median']:.1f} ({1e3 * s['q1']:.1f}–{1e3 * s['q3']:.1f}) | {ratio} "
            f"| {r['peak_memory_mib']:.0f} | {above} | {r['inference_images_per_second']:.1f} |"
        )
        if epochs:
            cached = r.get("epoch_seconds_cached")
            line += f" {cached:.2f} / {r['epoch_seconds_uncached']:.2f} |" if cached else " - |"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [label(r) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    med = [1e3 * r["step_seconds"]["median"] for r in rows]
    err = [
        [1e3 * (r["step_seconds"]["median"] - r["step_seconds"]["q1"]) for r in rows],
        [1e3 * (r["step_seconds"]["q3"] - r["step_seconds"]["median"]) for r in rows],
    ]
    axes[0].bar(names, med, yerr=err, capsize=3, color="tab:blue")
    axes[0].set_ylabel("train step (ms, median, q1–q3)")
    memory = [
        r["peak_memory_mib"] if r["memory_above_model_mib"] is None else r["memory_above_model_mib"]
        for r in rows
    ]
    axes[1].bar(names, memory, color="tab:orange")
    axes[1].set_ylabel("training memory above the model (MiB)")
    # a log axis has no zero for a bar to start from: points with their values instead
    params = [r["trainable_parameters"] for r in rows]
    axes[2].plot(names, params, "o", color="tab:green")
    for name, value in zip(names, params, strict=True):
        axes[2].annotate(
            f"{value:,}",
            (name, value),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            fontsize="x-small",
        )
    axes[2].set_yscale("log")
    axes[2].margins(x=0.1, y=0.15)
    axes[2].set_ylabel("trainable parameters (log scale)")
    axes[2].grid(alpha=0.3, axis="y")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: list[dict], output: Path, title: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench.json").write_text(json.dumps(rows, indent=2) + "\n")
    (output / "bench.md").write_text(f"# {title}\n\n{table(rows)}\n")
    plot(rows, output / "bench.png", title)
