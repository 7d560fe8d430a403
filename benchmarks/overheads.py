"""Engine overhead: how much of a training epoch is not the model's own forward-backward-update?

Run on demand, never as a test:

    .venv/bin/python benchmarks/overheads.py            # writes benchmarks/results/overheads.md

The same run (offline EfficientNet-Lite0 at 64 px, Fashion-MNIST, 1,024 training images, batch 32,
SGD, the cache off so every step runs the whole network and reads images through the data loader) is
timed three ways:

1. ``vprompt.train``'s second epoch (``epoch_seconds`` in ``metrics.jsonl``): data loading, hooks,
   loss and accuracy bookkeeping, the schedule, the non-finite check and the progress bar included;
2. the bare steps: the same model, the same batches already in memory as tensors, ``steps × median``
   forward + backward + update;
3. the data loader alone: one pass over the training loader, no model.

``epoch / bare`` is the engine's overhead factor (1.00 = none). Run it on an older checkout with
``PYTHONPATH=<checkout>/src`` to compare versions; that is why this script uses only the engine's
oldest entry points (``vprompt.train``, ``engine.run_data``, called ``engine.data`` in 0.1.0,
``engine.run``) and not ``vprompt.tools`` (its timing loop and markdown table are written out here),
which the first engine version lacks.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import vprompt
from vprompt.engine.rundir import RunDir

SETTINGS = dict(
    backbone="offline:efficientnet_lite0",
    data="fashion-mnist",
    img_size=64,
    train_size=1024,
    batch_size=32,
    val_split="none",
    test_split="none",
    epochs=2,
    lr=0.01,
    cache="off",
    progress=True,
)


def settings() -> dict:
    """:data:`SETTINGS` without the options an older checkout does not have (``cache``)."""
    from vprompt.engine.config import TrainConfig

    return {k: v for k, v in SETTINGS.items() if k in TrainConfig.__dataclass_fields__}


def engine_epoch(method: str, options: dict) -> float:
    with tempfile.TemporaryDirectory() as out:
        vprompt.train(**settings(), method=method, method_options=options, output=Path(out) / "run")
        return RunDir(Path(out) / "run").read_metrics()[-1]["epoch_seconds"]


def loader_pass(method: str, options: dict) -> tuple[float, list]:
    """One pass over the engine's training loader (no model), and its batches kept as tensors."""
    from vprompt.engine.config import make_config
    from vprompt.engine.distributed import setup
    from vprompt.engine.run import build_model

    try:
        from vprompt.engine.run_data import load_data, plan_data, train_loader
    except ImportError:  # a checkout from before the module's rename
        from vprompt.engine.data import load_data, plan_data, train_loader

    config = make_config({**settings(), "method": method, "method_options": options})
    sectioned = hasattr(config, "section")  # a checkout with typed option sections (issue #24)
    data_options = config.section(vprompt.engine.config.DataOptions) if sectioned else config
    plan = plan_data(data_options)
    ctx = setup(config.device)
    model = build_model(config, plan.info.num_classes)
    if sectioned:
        data = load_data(data_options, plan, model.backbone.data_config, model.num_classes, config.seed)
        loader, _ = train_loader(
            data.train, config.batch_size, config.seed, config.workers, ctx, data.augments
        )
    else:
        data = load_data(config, plan, model.backbone.data_config, model.num_classes)
        loader, _ = train_loader(data.train, config, ctx, data.augments)
    start = time.perf_counter()
    batches = [(x.clone(), y.clone()) for x, y in loader]
    return time.perf_counter() - start, batches


def bare_steps(method: str, options: dict, batches: list) -> float:
    bb = vprompt.backbone(SETTINGS["backbone"], num_classes=10, img_size=SETTINGS["img_size"])
    torch.manual_seed(0)
    model = vprompt.attach(bb, method, **options).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=SETTINGS["lr"], momentum=0.9)
    i = 0

    def step():
        nonlocal i
        x, y = batches[i % len(batches)]
        i += 1
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    times = []
    for _ in range(len(batches)):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * len(batches)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "overheads.md")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for method, options in [("ap", {"site": "stage.0"}), ("linear", {})]:
        loading, batches = loader_pass(method, options)
        epoch = engine_epoch(method, options)
        bare = bare_steps(method, options, batches)
        rows.append((method, options, epoch, bare, loading))
        print(
            f"{method}: epoch {epoch:.2f} s, bare steps {bare:.2f} s, loader {loading:.2f} s", file=sys.stderr
        )
    lines = [
        "# Engine overhead",
        "",
        f"Command: `python benchmarks/overheads.py` · {platform.node()} ({platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}) · vprompt from `{Path(vprompt.__file__).parent}`",
        "",
        "| method | engine epoch s | bare steps s | epoch / bare | loader pass alone s |",
        "|---|---|---|---|---|",
    ]
    for method, options, epoch, bare, loading in rows:
        name = f"{method}({', '.join(f'{k}={v}' for k, v in options.items())})" if options else method
        lines.append(f"| {name} | {epoch:.2f} | {bare:.2f} | **{epoch / bare:.2f}** | {loading:.2f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
