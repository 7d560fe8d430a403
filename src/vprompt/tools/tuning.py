"""The tuning protocol: an lr × weight-decay grid on the tuning split, chosen by validation only, then the
final fit on the final split with several seeds (VPT's and VAPT's protocol).

Rule: among the grid runs that finished (a run that diverged, or that a search stopped, never wins), the
highest validation accuracy wins; ties go to the lower
validation loss, then to the earlier point in grid order (learning rates in the order given, each with its
weight decays in the order given). Only ``val_*`` results are read: tuning runs never touch the test
split, and the final runs' test accuracy is only reported (mean ± sample std over the seeds).

A :class:`Plan` holds one dataset's runs: ``<out>/tune/lr<lr>-wd<wd>`` then ``<out>/final/seed<k>``, one
per seed (``seeds``: a count N for seeds 0..N-1, or the seeds themselves, e.g. VPT's 42 44 82 100 800).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.run import diverged_note
from ..engine.rundir import write_json, write_text
from .compute import account, compute_markdown, write_compute
from .executors import Executor, Job, Outcome, failures
from .search import Asha, halve
from .tables import markdown, mean_std, pm

RULE = "highest val_accuracy; ties: lower val_loss, then grid order"


def point_name(lr: float, wd: float) -> str:
    """A grid point's run folder name: ``lr0.01-wd0.0001``."""
    return f"lr{lr:g}-wd{wd:g}"


@dataclass
class Plan:
    """The runs for one dataset: an lr × wd grid on validation (if ``tuned``), then ``seeds`` final runs."""

    base: dict[str, Any]
    out: Path
    lrs: list[float]
    wds: list[float]
    seeds: int | list[int]
    tuned: bool = True
    search: Asha | None = None  # None: the exact grid, every point trained in full

    def __post_init__(self):
        if isinstance(self.seeds, int):
            self.seeds = list(range(self.seeds))
        self.seeds = [int(s) for s in self.seeds]
        if not self.lrs or not self.wds or not self.seeds:
            raise ValueError("a tuning plan needs learning rates, weight decays and at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"the final seeds repeat: {self.seeds}")

    search_record: dict[str, Any] | None = None

    def search_grid(self, executor: Executor) -> list[Outcome]:
        """The grid's outcomes by :func:`~.search.halve` (its record kept for the result)."""
        assert self.search is not None
        self.search.check(self.base)
        outcomes, self.search_record = halve(self.search, self.base["epochs"], self.grid_jobs(), executor)
        return outcomes

    def points(self) -> list[tuple[float, float]]:
        return [(lr, wd) for lr in self.lrs for wd in self.wds]

    def grid_jobs(self) -> list[Job]:
        if not self.tuned:
            return []
        return [
            Job.of(
                self.out,
                f"tune/{point_name(lr, wd)}",
                self.base,
                final=False,
                test_split="none",  # tuning never reads the test split
                lr=lr,
                weight_decay=wd,
            )
            for lr, wd in self.points()
        ]

    def final_jobs(self, choice: dict | None) -> list[Job]:
        if choice is None:
            return []
        lr, wd = choice["lr"], choice["weight_decay"]
        # the final fit has no validation split to select an epoch or stop early by: it keeps the last epoch
        return [
            Job.of(
                self.out,
                f"final/seed{s}",
                self.base,
                final=True,
                selection="final",
                early_stop=None,
                early_stop_metric="val_accuracy",
                lr=lr,
                weight_decay=wd,
                seed=s,
            )
            for s in self.seeds
        ]

    def choose(self, grid: list[Outcome]) -> dict | None:
        """The grid point to run finally (see the module's tuning rule); ``None`` if none finished."""
        if not self.tuned:
            lr, wd = self.points()[0]
            return {"lr": lr, "weight_decay": wd, "rule": "fixed"}
        return choose(list(zip(self.points(), grid, strict=True)))

    def result(self, grid: list[Outcome], choice: dict | None, final: list[Outcome]) -> dict[str, Any]:
        """What the plan found; also written to ``<out>/result.{json,md}``."""
        points = self.points() if self.tuned else []
        done = [o.summary for o in final if o.ok and (o.summary or {}).get("test_accuracy") is not None]
        tests = [s["test_accuracy"] for s in done]
        result = {key: self.base[key] for key in ("data", "backbone", "method", "method_options")}
        result |= {
            "tuned": self.tuned,
            "grid": [
                {"lr": lr, "weight_decay": wd, "status": status(o), "run": o.name}
                | {k: (o.summary or {}).get(k) for k in ("val_accuracy", "val_loss")}
                for (lr, wd), o in zip(points, grid, strict=True)
            ],
            "chosen": choice,
            "final": [
                {
                    "seed": seed,
                    "status": status(o),
                    "run": o.name,
                    "test_accuracy": (o.summary or {}).get("test_accuracy"),
                }
                for seed, o in zip(self.seeds, final, strict=False)
            ],
            "test_accuracy": dict(zip(("mean", "std"), mean_std(tests), strict=True)) | {"n": len(tests)}
            if tests
            else None,
            "failures": failures(grid + final),
            "search": self.search_record,
            "compute": account(grid + final),
        }
        for key in ("trainable_parameters", "trainable_parameters_without_head"):
            result[key] = done[0][key] if done else None
        write_json(self.out / "result.json", result)
        write_compute(self.out, result["compute"])
        write_text(self.out / "result.md", result_markdown(result))
        return result


def status(outcome: Outcome) -> str:
    """A run's status for the tables: ``trained``, ``reused``, ``failed``, ``diverged at epoch e step s``,
    ``stopped at rung r (epoch e)``."""
    s = outcome.summary or {}
    if s.get("diverged"):
        return diverged_note(s["diverged"])
    if outcome.status == "stopped":
        stop = s["search_stopped"]
        return f"stopped at rung {stop['rung']} (epoch {stop['epoch']})"
    return outcome.status


def eligible(outcome: Outcome) -> bool:
    """A finished run with a validation result: not failed, not diverged, not stopped by a search."""
    s = outcome.summary or {}
    return (
        outcome.status in ("trained", "reused")
        and not s.get("diverged")
        and s.get("val_accuracy") is not None
    )


def choose(points: list[tuple[tuple[float, float], Outcome]]) -> dict | None:
    """The best ``((lr, wd), outcome)`` by validation only (rule: :data:`RULE`); ``None`` if none finished."""
    candidates = [(i, lr, wd, o.summary) for i, ((lr, wd), o) in enumerate(points) if eligible(o)]
    if not candidates:
        return None

    def key(c):
        loss = c[3].get("val_loss")
        return (-c[3]["val_accuracy"], math.inf if loss is None or math.isnan(loss) else loss, c[0])

    _, lr, wd, s = min(candidates, key=key)
    return {
        "lr": lr,
        "weight_decay": wd,
        "val_accuracy": s["val_accuracy"],
        "val_loss": s.get("val_loss"),
        "rule": RULE,
    }


def result_markdown(r: dict[str, Any]) -> str:
    """A plan's result as markdown: the grid (chosen point marked), the final seeds, mean ± std."""
    lines = [f"# {r['method']} on {r['data']} ({r['backbone']})\n"]
    chosen = r["chosen"]
    if r["grid"]:
        rows = [
            [
                f"{g['lr']:g}",
                f"{g['weight_decay']:g}",
                g["val_accuracy"],
                g["val_loss"],
                g["status"],
                "←"
                if chosen and (g["lr"], g["weight_decay"]) == (chosen["lr"], chosen["weight_decay"])
                else "",
            ]
            for g in r["grid"]
        ]
        lines += [
            "## Grid (tuning split → validation)\n",
            markdown(["lr", "weight decay", "val accuracy (%)", "val loss", "status", "chosen"], rows),
        ]
        lines.append(f"Rule: {RULE}.\n")
    search = r.get("search")
    if search:
        stopped = ", ".join(f"{s['run']} at epoch {s['epoch']}" for s in search["stopped"]) or "none"
        lines.append(
            f"Search: {search['kind']} (grace {search['grace']} epochs, reduction {search['reduction']}, "
            f"rungs at epochs {search['rungs']}; decided by {search['engine']} "
            f"{search['pruner']}); stopped: {stopped}.\n"
        )
    if chosen is None:
        lines.append("No grid run finished: no final runs.\n")
        return "\n".join(lines + [compute_markdown(r["compute"])])
    lines += [
        "## Final runs (final split → test)\n",
        markdown(
            ["seed", "test accuracy (%)", "status"],
            [[f["seed"], f["test_accuracy"], f["status"]] for f in r["final"]],
        ),
    ]
    t = r["test_accuracy"]
    shown = pm(t["mean"], t["std"], t["n"]) + f" (n={t['n']})" if t else "–"
    lines.append(
        f"**Test accuracy: {shown}** with lr={chosen['lr']:g}, weight decay={chosen['weight_decay']:g}; "
        f"trainable parameters {r['trainable_parameters'] or 0:,}.\n"
    )
    return "\n".join(lines + [compute_markdown(r["compute"])])


def run_plans(plans: list[Plan], executor: Executor | None) -> list[dict[str, Any]]:
    """Every plan's grid in one batch (or, with a search, each plan's grid by successive halving), then
    every plan's final runs in one batch; the plans' results. The runs share frozen-prefix caches."""
    executor = executor or Executor()
    with executor.sharing(os.path.commonpath([str(p.out) for p in plans])):
        grids = _batched(executor, [p.grid_jobs() for p in plans if p.search is None or not p.tuned])
        searched = iter(grids)
        grids = [
            next(searched) if p.search is None or not p.tuned else p.search_grid(executor) for p in plans
        ]
        choices = [p.choose(g) for p, g in zip(plans, grids, strict=True)]
        finals = _batched(executor, [p.final_jobs(c) for p, c in zip(plans, choices, strict=True)])
    return [p.result(g, c, f) for p, g, c, f in zip(plans, grids, choices, finals, strict=True)]


def _batched(executor: Executor, job_lists: list[list[Job]]) -> list[list[Outcome]]:
    """Run all the lists' jobs together (so Ray can run them side by side); outcomes split back per list."""
    outcomes = iter(executor.run([j for jobs in job_lists for j in jobs]))
    return [[next(outcomes) for _ in jobs] for jobs in job_lists]
