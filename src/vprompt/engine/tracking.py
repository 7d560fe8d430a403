"""Where a run is tracked besides ``metrics.jsonl``: ``--log csv`` (default), ``tensorboard`` or ``wandb``.

The trainer talks to one small interface, :class:`Tracker`; every value is logged at the global step.
Design notes: ``docs/design.md``, section ``vprompt/engine/tracking.py``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from ..files import ensure_dir

STEPS = "steps.csv"
TENSORBOARD = "tensorboard"
WANDB = "wandb"
#: what each tracker adds to a run folder (see ``rundir.RUN_FILES``)
TRACKING_FILES = {STEPS, TENSORBOARD, WANDB}


class Tracker:
    """Tracks nothing (processes other than the main one, runs without a folder)."""

    def start(self, config: dict[str, Any], resume_step: int) -> None:
        pass

    def steps(self, rows: list[tuple[int, float, float]]) -> None:
        """``(global step, loss, lr)`` of steps just taken."""

    def epoch(self, row: dict[str, Any], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class CsvTracker(Tracker):
    def __init__(self, folder: Path):
        self.path = folder / STEPS

    def start(self, config, resume_step):
        kept = []
        if resume_step and self.path.is_file():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.reader(f) if r and r[0] != "step" and int(r[0]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows([["step", "loss", "lr"], *kept])

    def steps(self, rows):
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows([[s, repr(loss), repr(lr)] for s, loss, lr in rows])


class TensorBoardTracker(Tracker):
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                f"--log tensorboard needs tensorboard: pip install 'vprompt[tracking]' ({e})"
            ) from None
        self.folder = ensure_dir(folder / TENSORBOARD, "--log tensorboard folder")
        self.writer_cls, self.writer, self.last = SummaryWriter, None, 0

    def start(self, config, resume_step):
        self.config = config
        self.writer = self.writer_cls(str(self.folder), purge_step=resume_step or None)
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", f"```\n{text}\n```", global_step=resume_step)

    def steps(self, rows):
        for step, loss, lr in rows:
            self.last = step
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, row, step):
        for key, value in _numbers(row).items():
            self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()

    def finish(self, summary):
        from torch.utils.tensorboard.summary import hparams

        for key, value in _numbers(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, self.last)
        text = json.dumps(summary, indent=2, default=str)
        self.writer.add_text("summary", f"```\n{text}\n```", global_step=self.last)
        metrics = {f"summary/{k}": v for k, v in _numbers(summary).items() if k not in self.config}
        for proto in hparams(hparam_values(self.config), metrics):  # experiment, session start and end
            self.writer.file_writer.add_summary(proto, self.last)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def hparam_values(config: dict[str, Any]) -> dict[str, Any]:
    """A run's options as HParams values, numbers or text (booleans ``true``/``false``, lists as JSON):
    method options as ``method_options.<name>``; unset options and the derived ``resolved`` left out."""
    flat = {k: v for k, v in config.items() if k not in ("method_options", "resolved")}
    flat |= {f"method_options.{k}": v for k, v in (config.get("method_options") or {}).items()}
    return {
        k: v if isinstance(v, int | float | str) and not isinstance(v, bool) else json.dumps(v, default=str)
        for k, v in flat.items()
        if v is not None
    }


class WandbTracker(Tracker):
    def __init__(self, folder: Path):
        try:
            import wandb
        except ImportError as e:
            raise ImportError(f"--log wandb needs wandb: pip install 'vprompt[tracking]' ({e})") from None
        ensure_dir(folder / WANDB, "--log wandb folder")
        self.wandb, self.folder, self.run = wandb, folder, None

    def start(self, config, resume_step):
        if "WANDB_MODE" not in os.environ and not os.environ.get("WANDB_API_KEY"):
            os.environ["WANDB_MODE"] = "offline"  # no account: keep everything on disk, no network
        init = dict(
            project=os.environ.get("WANDB_PROJECT", "vprompt"),
            name=self.folder.name,
            dir=str(self.folder),
            config=config,
        )  # a resumed run is a second W&B run that continues the step axis
        try:
            self.run = self.wandb.init(**init)
            return
        except Exception as e:  # CommError, UsageError, AuthenticationError ...: no common base but Exception
            failure = _first_line(e)
            if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
                raise RuntimeError(f"--log wandb: W&B did not start ({failure}); use --log csv") from None
        offline = self.folder / WANDB
        print(
            f"vprompt: warning: W&B did not start online ({failure}); logging offline into {offline} "
            f"(upload it later: wandb sync {offline}/offline-run-*)",
            file=sys.stderr,
        )
        try:
            self.run = self.wandb.init(**init, mode="offline")
        except Exception as e:
            raise RuntimeError(
                f"--log wandb: W&B did not start, not even offline ({_first_line(e)})"
            ) from None

    def steps(self, rows):
        for step, loss, lr in rows:
            self.run.log({"train/loss": loss, "train/lr": lr}, step=step)

    def epoch(self, row, step):
        self.run.log({f"epoch/{k}": v for k, v in _numbers(row).items()}, step=step)

    def finish(self, summary):
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float | str | bool)})

    def close(self):
        if self.run is not None:
            self.run.finish()
            # finish() can return before W&B's service process has written the run file (seen on a
            # loaded machine); teardown waits for that process, so the offline run is complete on disk
            self.wandb.teardown()


TRACKERS = {"csv": CsvTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def open_tracker(kind: str, folder: Path | None, main: bool) -> Tracker:
    """The tracker ``--log kind`` asks for, writing into the run ``folder`` (the main process only)."""
    if kind not in TRACKERS:
        raise ValueError(f"unknown --log {kind!r}; choose one of: {', '.join(TRACKERS)}")
    if folder is None:
        if kind != "csv":
            raise ValueError(f"--log {kind} writes into the run folder: give --output")
        return Tracker()
    return TRACKERS[kind](Path(folder)) if main else Tracker()
