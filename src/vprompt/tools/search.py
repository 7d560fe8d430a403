"""An opt-in early-stopping search over a tuning grid: successive halving with ASHA's rungs (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", 2020), decided by Optuna's
``SuccessiveHalvingPruner`` (``pip install 'vprompt[search]'``) and run by the sweep's own executors.

Every grid point is one Optuna trial and trains to the first rung (``grace`` epochs); at each rung
(``grace · reduction^k`` epochs) every point reports its validation accuracy there, then the pruner is
asked, point by point in an order drawn from the sweep's seed, which stop (its rule: ``docs/design.md``);
the others go on. The survivors finish their full schedule and
the grid's rule chooses among the finished points. A paused run resumes from its checkpoint, so a
survivor's result is exactly that of the full grid's run. Only validation results reach the pruner;
tuning runs never see the test split. Design notes: ``docs/design.md``, section ``vprompt/tools/search.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from ..engine.rundir import RunDir
from .executors import Executor, Job, Outcome

SEARCHES = ("grid", "asha")
EXTRA = "pip install 'vprompt[search]'"


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


def load_optuna():
    """The ``optuna`` module; without it, one line naming the extra (before any run)."""
    try:
        import optuna
    except ImportError:
        raise RuntimeError(f"--search asha needs Optuna: {EXTRA}") from None
    return optuna


def rung_accuracy(outcome: Outcome, epoch: int) -> float | None:
    """A point's validation accuracy at ``epoch``: paused there, or finished in an earlier call of the
    sweep (its metrics read back). None: it has no validation there (diverged, failed, stopped earlier by
    its own ``--early-stop``)."""
    if outcome.status == "paused":
        rows = outcome.summary["metrics"]
    elif outcome.ok and outcome.summary and not outcome.summary.get("diverged"):
        rows = RunDir(outcome.output).read_metrics()
    else:
        return None
    return (rows[epoch - 1] if len(rows) >= epoch else {}).get("val_accuracy")


def arrival(points: list[int], jobs: list[Job], rung: int) -> list[int]:
    """The order in which a rung's points are put to the pruner: a shuffle drawn from the sweep's seed and
    the rung (the same on every rerun)."""
    random.Random(f"{jobs[0].config.get('seed', 0)}:{rung}").shuffle(points)
    return points


def halve(search: Asha, epochs: int, jobs: list[Job], executor: Executor) -> tuple[list[Outcome], dict]:
    """Run ``jobs`` (one grid, in grid order) by successive halving, Optuna deciding at each rung; their
    outcomes in grid order (a point stopped at a rung has status ``stopped`` and a summary saying where)
    and the search's record."""
    optuna = load_optuna()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no log line per trial in the sweep's output
    try:
        return _halve(optuna, search, epochs, jobs, executor)
    finally:
        optuna.logging.set_verbosity(level)


def _halve(optuna, search: Asha, epochs: int, jobs: list[Job], executor: Executor) -> tuple[list, dict]:
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=search.grace, reduction_factor=search.reduction, min_early_stopping_rate=0
    )
    study = optuna.create_study(direction="maximize", pruner=pruner)  # in memory
    grid = {k: list(dict.fromkeys(j.config[k] for j in jobs)) for k in ("lr", "weight_decay")}
    for job in jobs:  # one trial per grid point, with the point's own values
        study.enqueue_trial({k: job.config[k] for k in grid}, user_attrs={"run": job.name})
    space = {k: optuna.distributions.CategoricalDistribution(v) for k, v in grid.items()}
    trials = [study.ask(space) for _ in jobs]

    def tell(i: int, outcome: Outcome) -> None:
        accuracy = (outcome.summary or {}).get("val_accuracy") if outcome.ok else None
        if accuracy is None or (outcome.summary or {}).get("diverged"):
            study.tell(trials[i], state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trials[i], accuracy)

    outcomes: list[Outcome | None] = [None] * len(jobs)
    alive = list(range(len(jobs)))
    record = search.record(epochs) | {
        "engine": f"optuna {optuna.__version__}",
        "pruner": "SuccessiveHalvingPruner",
        "stopped": [],
        "rung_results": [],
    }
    for k, rung in enumerate(search.rungs(epochs)):
        if len(alive) <= 1:
            break
        reached, results = {}, executor.run([replace(jobs[i], pause=rung) for i in alive])
        for i, outcome in zip(alive, results, strict=True):
            accuracy = rung_accuracy(outcome, rung)
            if accuracy is None:  # finished (diverged, stopped early by its own --early-stop) or failed
                outcomes[i] = outcome
                tell(i, outcome)
            else:
                trials[i].report(accuracy, step=rung)
                reached[i] = (accuracy, outcome)
        # ASHA decides as points arrive, each against those asked before it at this rung: they are asked
        # in an order drawn from the sweep's seed, so that the grid's own order (by lr) does not decide
        pruned = {i: trials[i].should_prune() for i in arrival(list(reached), jobs, rung)}
        points = [{"run": jobs[i].name, "val_accuracy": reached[i][0], "kept": not pruned[i]} for i in pruned]
        record["rung_results"].append({"rung": k + 1, "epoch": rung, "points": points})
        for i in [i for i in reached if pruned[i]]:
            accuracy, outcome = reached[i]
            stop = {"rung": k + 1, "epoch": rung, "val_accuracy": accuracy, "epochs_skipped": epochs - rung}
            record["stopped"].append({"run": jobs[i].name, **stop})
            summary = {"search_stopped": stop, "compute": outcome.summary.get("compute")}
            outcomes[i] = Outcome(outcome.name, outcome.output, "stopped", summary)
            study.tell(trials[i], state=optuna.trial.TrialState.PRUNED)
        alive = [i for i in reached if not pruned[i]]
    for i, outcome in zip(alive, executor.run([jobs[i] for i in alive]), strict=True):
        outcomes[i] = outcome
        tell(i, outcome)
    return outcomes, record  # type: ignore[return-value]
