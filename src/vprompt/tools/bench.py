"""``vprompt bench``: what each method costs on one backbone, and how close it comes to its bounds.

Methods are given as ``name`` or ``name:option=value:option=value`` (``ap:site=block.9:shape=channel``).
Design notes: ``docs/design.md``, section ``vprompt/tools/bench.py``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write, ensure_dir, write_text

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


def interleaved_times(
    calls: dict[str, Callable[[], object]],
    steps: int,
    warmup: int,
    device: torch.device,
    rounds: int = 3,
    prepare: Callable[[str], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds of ``steps`` calls of each function, taken in ``rounds`` rounds that alternate between
    them, every other round in reverse order (so that a drift in machine speed hits them alike); each
    function has ``warmup`` untimed calls before its first round, and ``prepare(name)`` (untimed) runs
    before each of its rounds."""
    rounds = max(1, min(rounds, steps))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        n = steps // rounds + (r < steps % rounds)
        for name, call in list(calls.items())[:: -1 if r % 2 else 1]:
            if prepare is not None:
                prepare(name)
            times[name] += time_steps(call, n, warmup if r == 0 else 0, device)
    return times


def plain_backbone(backbone: str, img_size: int | None, pretrained: bool):
    import vprompt

    return vprompt.backbone(backbone, num_classes=10, img_size=img_size, pretrained=pretrained)


def build(backbone: str, method: str, options: dict, img_size: int | None, pretrained: bool, device):
    import vprompt

    bb = plain_backbone(backbone, img_size, pretrained)
    if method in vprompt.methods.SITE_METHODS and "site" not in options:
        options = {**options, "site": three_quarters_site(bb)}
    torch.manual_seed(0)
    return vprompt.attach(bb, method, **options).to(device), options


def train_step(forward: Callable, x: torch.Tensor, y: torch.Tensor, optimizer, amp) -> Callable[[], None]:
    """One training step as a run takes it: ``forward(x)`` under ``amp``'s autocast, cross-entropy
    against ``y``, backward and update (through the gradient scaler where ``amp`` has one)."""

    def step() -> None:
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

    return step


def prefix_forward(model, site: str, x: torch.Tensor, amp) -> Callable[[], torch.Tensor]:
    """The no-gradient forward of the frozen prefix up to ``site``: its raw activation there."""
    bb = model.backbone

    def prefix() -> torch.Tensor:
        with torch.no_grad(), amp.autocast():
            return bb.site(site).capture(bb, x)

    return prefix


def time_step_and_floor(
    model, x, y, optimizer, amp, step: Callable, steps: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    """``step``'s times and its floor: the prefix forward up to the method's first site and the suffix
    step from there (see the module's doc), in alternating rounds. ``{"site", "step", "prefix",
    "suffix"}``, each of the last three a list of seconds (prefix and suffix None without a floor;
    prefix empty and suffix the step's own times for a method acting on the input)."""
    site = model.method.first_site(model.backbone)
    calls = {"step": step}
    if site != "input" and model.backbone.can_resume_at(site):
        calls["prefix"] = prefix_forward(model, site, x, amp)
        activation = calls["prefix"]()
        calls["suffix"] = train_step(lambda a: model.forward_from(site, a), activation, y, optimizer, amp)
        calls["suffix"]()  # its first call, untimed like the step's
    times = interleaved_times(calls, steps, warmup, device)
    if site == "input":
        times |= {"prefix": [], "suffix": times["step"]}
    return {"site": site, "step": times["step"], "prefix": times.get("prefix"), "suffix": times.get("suffix")}


def floor_fields(step: float, prefix: list[float] | None, suffix: list[float] | None) -> dict[str, Any]:
    """The row's floor figures from the step's median and the prefix's and suffix's times."""
    if suffix is None:
        return dict.fromkeys(("prefix_seconds", "suffix_seconds", "floor_seconds", "step_vs_floor"))
    prefix_s = statistics.median(prefix) if prefix else 0.0
    suffix_s = statistics.median(suffix)
    floor = prefix_s + suffix_s
    return {
        "prefix_seconds": prefix_s,
        "suffix_seconds": suffix_s,
        "floor_seconds": floor,
        "step_vs_floor": step / floor,
    }


def cache_fields(row: dict) -> dict[str, Any]:
    """The cache's epoch speed-up, its compute bound (prefix + suffix) / suffix at the cached site, and
    their quotient; None where no cache was used or the row has no floor at that site."""
    site = (row.get("cache") or {}).get("site")
    if site is None:
        return dict.fromkeys(("cache_speedup", "cache_bound", "cache_vs_bound"))
    speedup = row["epoch_seconds_uncached"] / row["epoch_seconds_cached"]
    bound = None
    if site == row.get("floor_site") and row.get("suffix_seconds"):
        bound = (row["prefix_seconds"] + row["suffix_seconds"]) / row["suffix_seconds"]
    return {
        "cache_speedup": speedup,
        "cache_bound": bound,
        "cache_vs_bound": None if bound is None else speedup / bound,
    }


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
    first warm-up step (which compiles) is reported as ``first_step_seconds``. The bare backbone's
    forward is timed last, on a second backbone built after the peak memory was read."""
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
    step = train_step(forward, x, y, optimizer, amp)

    first = time_steps(step, 1, 0, dev)[0]
    timed = time_step_and_floor(model, x, y, optimizer, amp, step, steps, max(0, warmup - 1), dev)
    step_times = timed["step"]
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
    bare = plain_backbone(backbone, img_size, pretrained).to(dev).eval()
    bare_x = torch.randn(batch, *bare.input_size, generator=g).to(dev)

    def bare_forward():
        with torch.no_grad(), amp.autocast():
            bare(bare_x)

    forward_s = statistics.median(time_steps(bare_forward, steps, max(1, warmup // 2), dev))
    step_s = statistics.median(step_times)
    return {
        "method": method,
        "options": options,
        "trainable_parameters": model.trainable_parameters(),
        "trainable_parameters_without_head": model.trainable_parameters(head=False),
        "total_parameters": model.total_parameters(),
        "trainable_percent": 100.0 * model.trainable_parameters() / model.total_parameters(),
        "step_seconds": quartiles(step_times),
        "first_step_seconds": first,
        "train_images_per_second": batch / step_s,
        "forward_seconds": forward_s,
        "step_vs_forward": step_s / forward_s,
        "floor_site": timed["site"],
        "last_block": model.backbone.cls_only_status(),
        "unread_rows": model.backbone.rows_status(),
        **floor_fields(step_s, timed["prefix"], timed["suffix"]),
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
    precision: str = "auto",
    epoch_data: str | None = None,
) -> list[dict[str, Any]]:
    """Measure every method (each in its own process); with ``epoch_images``, also epoch times at the
    same batch (on ``epoch_data``, synthetic images unless given) and the cache's speed-up and bound."""
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
            precision=precision,
        )
        if epoch_images:
            size = row["input_size"][-1]
            row |= epoch_times(
                backbone,
                method,
                row["options"],
                size,
                epoch_images,
                pretrained,
                data=epoch_data,
                device=device,
                batch=batch,
                precision=precision,
            )
            row |= cache_fields(row)
        rows.append(row)
    from ..methods import REFERENCE_METHOD

    reference = next((r for r in rows if r["method"] == REFERENCE_METHOD), None)
    for row in rows:
        if reference is not None:
            row["step_vs_linear"] = row["step_seconds"]["median"] / reference["step_seconds"]["median"]
    return rows


def label(row: dict) -> str:
    opts = ",".join(
        f"{k}={v}" for k, v in row["options"].items() if k in ("site", "shape", "r", "num_prompts")
    )
    return f"{row['method']}({opts})" if opts else row["method"]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[dict]) -> str:
    """A markdown table of the measurements; "-" where a figure does not apply."""
    head = (
        "| method | trainable | % | step ms (q1–q3) | × linear | × forward | × floor "
        "| peak MiB | above model MiB | infer img/s |"
    )
    lines = [head, "|" + "---|" * 10]
    epochs = any("epoch_seconds_uncached" in r for r in rows)
    if epochs:
        lines[0] += " epoch s (cached / uncached) | speed-up | bound | ÷ bound |"
        lines[1] += "---|" * 4
    for r in rows:
        s = r["step_seconds"]
        above = "-" if r["memory_above_model_mib"] is None else f"{r['memory_above_model_mib']:.0f}"
        line = (
            f"| {label(r)} | {r['trainable_parameters']:,} | {r['trainable_percent']:.3f} "
            f"| {1e3 * s['median']:.1f} ({1e3 * s['q1']:.1f}–{1e3 * s['q3']:.1f}) "
            f"| {_ratio(r.get('step_vs_linear'))} | {_ratio(r.get('step_vs_forward'))} "
            f"| {_ratio(r.get('step_vs_floor'))} "
            f"| {r['peak_memory_mib']:.0f} | {above} | {r['inference_images_per_second']:.1f} |"
        )
        if epochs:
            if "epoch_seconds_uncached" in r:
                line += f" {r['epoch_seconds_cached']:.2f} / {r['epoch_seconds_uncached']:.2f} |"
            else:
                line += " - |"
            line += "".join(
                f" {_ratio(r.get(k))} |" for k in ("cache_speedup", "cache_bound", "cache_vs_bound")
            )
        lines.append(line)
    return "\n".join(lines)


def last_block_notes(rows: list[dict]) -> str:
    """One line per way the last block ran (a CLS-pooled ViT's CLS row alone, or all tokens and why),
    naming the methods; empty for backbones that are not ViTs."""
    statuses: dict[str, list[str]] = {}
    for r in rows:
        if r.get("last_block"):
            statuses.setdefault(r["last_block"], []).append(label(r))
    if set(statuses) <= {"all tokens: not a timm VisionTransformer"}:
        return ""
    return "\n".join(f"Last block: {status} — {', '.join(names)}." for status, names in statuses.items())


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
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def write(rows: list[dict], output: Path, title: str) -> None:
    """``bench.json``, ``bench.md`` and ``bench.png`` in ``output``, each written atomically."""
    ensure_dir(output)
    write_text(output / "bench.json", json.dumps(rows, indent=2) + "\n")
    notes = last_block_notes(rows)
    write_text(output / "bench.md", f"# {title}\n\n{table(rows)}\n" + (f"\n{notes}\n" if notes else ""))
    plot(rows, output / "bench.png", title)
