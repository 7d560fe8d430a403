"""Helpers for the sweep and report tests: one thread and a fake ``train``."""

from __future__ import annotations

import torch

from vprompt.engine.config import to_dict
from vprompt.engine.run import as_config
from vprompt.engine.rundir import RunDir


def one_thread():
    """Run a test module's tiny runs on one thread (they gain nothing from more, and stay quick when the
    machine is shared); use as ``yield from one_thread()`` in a module-scoped autouse fixture."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeTrain:
    """Stands in for ``vprompt.train``: writes a run directory whose summary ``results(config)`` gives."""

    def __init__(self, results):
        self.results = results
        self.calls: list[dict] = []

    def __call__(self, config, output, resume=False):
        config = to_dict(as_config(config, {}))
        self.calls.append(config)
        run = RunDir(output)
        run.write_config(config)
        summary = {
            "backbone": config["backbone"],
            "method": config["method"],
            "method_options": config["method_options"],
            "data": config["data"],
            "final": config["final"],
            "seed": config["seed"],
            "trainable_parameters": 1000,
            "trainable_parameters_without_head": 900,
            "train_seconds": 1.0,
            "peak_memory_mib": 100.0,
            **self.results(config),
        }
        summary.setdefault("accuracy", summary.get("test_accuracy", summary.get("val_accuracy")))
        run.write_summary(summary)
        return summary


def optuna_keeps(values: list[float], reduction: int) -> list[bool]:
    """Which points Optuna's ``SuccessiveHalvingPruner`` lets go on at a rung when they are asked in this
    order: the j-th goes on iff its value is at least the k-th best of the first j, k = max(1, j // reduction)
    (``optuna/pruners/_successive_halving.py``: a value counts for the others once it has been asked)."""
    return [
        v >= sorted(values[:j], reverse=True)[max(1, j // reduction) - 1]
        for j, v in enumerate(values, start=1)
    ]
