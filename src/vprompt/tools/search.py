"""An opt-in early-stopping search over a tuning grid: successive halving with ASHA's rungs (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", 2020), run by the sweep's own executors.

Every grid point trains to the first rung (``grace`` epochs); at each rung the points are ranked by the
tuning rule on their validation results at that epoch, the best ``1/reduction`` of them (at least one)
go on to the next rung (``grace · reduction^k`` epochs), and the others stop there, recorded with their
rung and validation accuracy. The survivors finish their full schedule and the grid's rule chooses among
the finished points. A paused run resumes from its checkpoint, so a survivor's result is exactly that
of the full grid's run. Only validation results are read; tuning runs never see the test split.
Design notes: ``docs/design.md``, section ``vprompt/tools/search.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..engine.rundir import RunDir
from .executors import Executor, Job, Outcome

SEARCHES = ("grid", "asha")


@dataclass(frozen=True)
class Asha:
    """Successive halving: rungs at ``grace · reduction^k`` epochs (below the schedule's end)."""

    grace: int = 1
    reduction: int = 4

    def __post_init__(self):
        if self.grace < 1:
            raise ValueError(f"--asha-grace must be at least 1 epoch, got {self.grace}")
        if self.reduction < 2:
            raise ValueError(f"--asha-reduction must be at least 2, got {self.reduction}")

    def rungs(self, epochs: int) -> list[int]:
        """The epochs at which points are compared (those before the last epoch)."""
        rungs, epoch = [], self.grace
        while epoch < epochs:
            rungs.append(epoch)
            epoch *= self.reduction
        return rungs

    def check(self, base: dict[str, Any]) -> None:
        """Every rung needs a validation there."""
        missed = [r for r in self.rungs(base["epochs"]) if r % base["eval_every"]]
        if missed:
            raise ValueError(
                f"--search asha compares the grid points on validation at epochs {self.rungs(base['epochs'])}"
                f", and --eval-every {base['eval_every']} validates none at epoch {missed[0]}; use "
                "--eval-every 1 or a --asha-grace it divides"
            )

    def record(self, epochs: int) -> dict[str, Any]:
        return {"kind": "asha", "grace": self.grace, "reduction": self.reduction, "rungs": self.rungs(epochs)}


def rung_score(index: int, outcome: Outcome, epoch: int) -> tuple | None:
    """The tuning rule's sort key of a point at ``epoch``: paused there, or finished in an earlier call
    of the sweep (its metrics read back). None: it has no validation there (diverged, failed, stopped
    earlier by its own ``--early-stop``)."""
    if outcome.status == "paused":
        rows = outcome.summary["metrics"]
    elif outcome.ok and outcome.summary and not outcome.summary.get("diverged"):
        rows = RunDir(outcome.output).read_metrics()
    else:
        return None
    row = rows[epoch - 1] if len(rows) >= epoch else {}
    accuracy, loss = row.get("val_accuracy"), row.get("val_loss")
    if accuracy is None:
        return None
    return (-accuracy, math.inf if loss is None else loss, index)


def halve(search: Asha, epochs: int, jobs: list[Job], executor: Executor) -> tuple[list[Outcome], dict]:
    """Run ``jobs`` (one grid, in grid order) by successive halving; their outcomes in grid order (a point
    stopped at a rung has status ``stopped`` and a summary saying where) and the search's record."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    alive = list(range(len(jobs)))
    record = search.record(epochs) | {"stopped": [], "rung_results": []}
    for k, rung in enumerate(search.rungs(epochs)):
        if len(alive) <= 1:
            break
        results = executor.run([replace(jobs[i], pause=rung) for i in alive])
        scores = {}
        for i, outcome in zip(alive, results, strict=True):
            score = rung_score(i, outcome, rung)
            if score is None:  # finished (diverged, stopped early by its own --early-stop) or failed
                outcomes[i] = outcome
            else:
                scores[i] = (score, outcome)
        keep = max(1, len(scores) // search.reduction)
        ranked = sorted(scores, key=lambda i: scores[i][0])
        record["rung_results"].append(
            {
                "rung": k + 1,
                "epoch": rung,
                "points": [
                    {"run": jobs[i].name, "val_accuracy": -scores[i][0][0], "kept": n < keep}
                    for n, i in enumerate(ranked)
                ],
            }
        )
        for i in ranked[keep:]:
            outcome = scores[i][1]
            accuracy = -scores[i][0][0]
            stop = {"rung": k + 1, "epoch": rung, "val_accuracy": accuracy, "epochs_skipped": epochs - rung}
            record["stopped"].append({"run": jobs[i].name, **stop})
            summary = {"search_stopped": stop, "compute": outcome.summary.get("compute")}
            outcomes[i] = Outcome(outcome.name, outcome.output, "stopped", summary)
        alive = ranked[:keep]
    for i, outcome in zip(alive, executor.run([jobs[i] for i in alive]), strict=True):
        outcomes[i] = outcome
    return outcomes, record  # type: ignore[return-value]
