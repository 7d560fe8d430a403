"""Executors: run a list of training jobs, one run directory each, in this process or on Ray.

A :class:`Job` is a complete run config and its run directory. Every executor treats a job the same way
(:func:`run_job`): a finished run is read back and never recomputed, an interrupted run resumes from its
checkpoint, and a run that fails writes ``error.txt`` (its traceback) into its directory while the other
jobs go on. ``Executor("local")`` runs the jobs one after another in this process; ``Executor("ray")``
runs one Ray task per job on a local Ray instance or on the cluster at ``address``. The runs of one
sweep share their frozen-prefix caches (in memory locally, in the sweep's folder on Ray).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..engine import train
from ..engine.cache import SharedCaches, shared_store, sharing
from ..engine.run import config_differences, diverged_note, paused_after
from ..engine.rundir import ERROR, RunDir, lock_folder, write_json, write_text

FAILURES = "failures.json"
#: where the runs of a sweep on Ray share their frozen-prefix caches (removed when the sweep ends)
SHARED_CACHES = ".vprompt-caches"
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """One run: ``name`` is its path relative to the sweep's output (``tune/lr0.01-wd0``)."""

    name: str
    output: str
    config: dict[str, Any]
    pause: int | None = None  # train up to this epoch only, resumable (a search's rung)
    caches: str | None = None  # the folder where the sweep's runs share frozen-prefix caches (Ray)

    @classmethod
    def of(
        cls, out: str | Path, name: str, base: dict[str, Any], options: dict | None = None, **changes
    ) -> Job:
        """The job ``<out>/<name>``: the full config ``base`` with ``changes`` and method ``options`` on top."""
        config = {**base, **changes, "method_options": {**base["method_options"], **(options or {})}}
        return cls(name, str(Path(out) / name), config)


@dataclass
class Outcome:
    """What became of a job: ``reused`` (finished before), ``trained`` (now), ``failed``, ``paused`` (at
    its job's ``pause`` epoch: ``summary`` holds its metrics so far) or ``stopped`` (by a search)."""

    name: str
    output: str
    status: str
    summary: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def run_job(job: Job) -> Outcome:
    """Run (or reuse, or resume) one job; any error becomes a failed :class:`Outcome` and ``error.txt``."""
    run = RunDir(job.output)
    try:
        if run.finished:  # read back, never recomputed, if it has the options the job asks for
            differ = config_differences(run.read_config(), job.config)
            if differ:
                raise ValueError(
                    f"{run.path} holds a finished run with other options ({', '.join(differ)}); "
                    "delete it or choose another output folder"
                )
            outcome = Outcome(job.name, job.output, "reused", run.read_summary())
        else:
            with contextlib.ExitStack() as scope:
                if job.caches is not None:
                    scope.enter_context(sharing(SharedCaches(job.caches)))
                scope.enter_context(paused_after(job.pause))
                summary = train(job.config, output=job.output, resume=True)
            outcome = Outcome(job.name, job.output, "paused" if "paused" in summary else "trained", summary)
    except Exception as e:  # a failed run is recorded; KeyboardInterrupt still stops the sweep
        if not run.finished:  # (a finished run that does not match keeps its folder as it is)
            write_text(run / ERROR, traceback.format_exc())
        return Outcome(job.name, job.output, "failed", error=f"{type(e).__name__}: {e}")
    (run / ERROR).unlink(missing_ok=True)
    return outcome


def check_reusable(jobs: Sequence[Job]) -> None:
    """Refuse, before anything runs or is written, a sweep whose folder holds finished runs made with other
    options (its earlier results stay as they are)."""
    clashes = []
    for job in jobs:
        run = RunDir(job.output)
        if run.finished:
            with contextlib.suppress(ValueError, OSError):  # an unreadable run fails on its own later
                differ = config_differences(run.read_config(), job.config)
                if differ:
                    clashes.append(f"{run.path} ({', '.join(differ[:2])})")
    if clashes:
        more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
        raise ValueError(
            f"this sweep's folder holds finished runs made with other options: {clashes[0]}{more}; nothing "
            "was run or overwritten. Use another --output for the new options (or delete those runs)"
        )


def one_sweep_at_a_time(sweep: Callable) -> Callable:
    """Run ``sweep`` (a function with an ``out`` argument) holding the lock of its folder ``out``: a second
    sweep into the same folder is refused (``RunLocked``) instead of mixing its runs with the first's. The
    lock dies with its process, so a sweep killed with ``kill -9`` can simply be run again."""
    signature = inspect.signature(sweep)

    @functools.wraps(sweep)
    def locked(*args: Any, **kwargs: Any) -> Any:
        lock = lock_folder(Path(signature.bind(*args, **kwargs).arguments["out"]), "sweep folder")
        try:
            return sweep(*args, **kwargs)
        finally:
            lock.close()

    return locked


def describe(outcome: Outcome, label: str = "") -> str:
    """One line about an outcome, for the sweep's log (``label``: what the run is, see :func:`labels`)."""
    name = f"{outcome.name} ({label})" if label else outcome.name
    if not outcome.ok:
        return f"{name}: FAILED ({outcome.error})"
    s = outcome.summary or {}
    if outcome.status == "paused":
        return f"{name}: paused after epoch {s['paused']}"
    if s.get("diverged"):
        return f"{name}: {outcome.status}, {diverged_note(s['diverged'])}"
    split = "test" if s.get("test_accuracy") is not None else "val"
    accuracy = s.get(f"{split}_accuracy")
    shown = f"{split} {accuracy:.2f}%" if accuracy is not None else "no accuracy"
    return f"{name}: {outcome.status} ({shown})"


def labels(jobs: Sequence[Job]) -> list[str]:
    """Per job: ``dataset · method`` and the values of the options (run or method options) that tell it
    from the other jobs of the sweep, e.g. ``vtab1k:dtd · ap · site=block.3 seed=1``."""
    flat = [{**j.config, **j.config["method_options"], "method_options": None} for j in jobs]
    keys = dict.fromkeys(k for f in flat for k in f)
    varying = [k for k in keys if k not in ("data", "method") and len({repr(f.get(k)) for f in flat}) > 1]

    def value(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    return [
        " · ".join([str(j.config["data"]), str(j.config["method"])])
        + "".join(f"{' · ' if i == 0 else ' '}{k}={value(f.get(k))}" for i, k in enumerate(varying))
        for j, f in zip(jobs, flat, strict=True)
    ]


def duration(seconds: float) -> str:
    """``75`` → ``1m15s``, ``4000`` → ``1h06m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Clock:
    """Elapsed time and an estimate of the time left for ``total`` runs.

    The rate counts only runs that trained (reused runs take no time, so they would make the estimate
    far too short); with runs in parallel (Ray) it is the observed rate, parallelism included.
    """

    def __init__(self, total: int, now: Callable[[], float] = time.perf_counter):
        self.total, self.now, self.start = total, now, now()
        self.finished = self.trained = 0

    def done(self, status: str) -> None:
        self.finished += 1
        self.trained += status != "reused"

    def left(self) -> float | None:
        remaining = self.total - self.finished
        if remaining == 0:
            return 0.0
        if self.trained == 0:
            return None
        return (self.now() - self.start) / self.trained * remaining

    def __str__(self) -> str:
        left = self.left()
        eta = "left unknown yet" if left is None else f"about {duration(left)} left"
        return f"elapsed {duration(self.now() - self.start)}, {eta}"


@dataclass
class Executor:
    """Runs jobs: ``kind`` ``local`` (sequentially, in this process) or ``ray`` (one task per job).

    ``address``: the Ray cluster to join (``auto``, ``HEAD_IP:6379``); ``None`` starts a local Ray
    instance (or joins the one ``RAY_ADDRESS`` names). ``cpus``/``gpus``: Ray resources per run;
    ``gpus=None`` is 1 when the cluster has GPUs, else 0 (Ray hides the GPUs from a task that asks none).
    """

    kind: str = "local"
    address: str | None = None
    cpus: float = 1
    gpus: float | None = None
    log: Callable[[str], None] | None = field(default=print, repr=False)
    share_caches: bool = True  # runs that would build the same frozen-prefix cache share one
    _folder: Path | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.kind not in ENGINES:
            raise ValueError(f"unknown engine {self.kind!r}; choose one of: {', '.join(ENGINES)}")

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """The outcomes of ``jobs``, in the order of ``jobs``."""
        names = [j.output for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError("two jobs of one sweep share a run directory")
        check_reusable(jobs)
        if not jobs:
            return []
        self._clock = Clock(len(jobs))
        self._labels = labels(jobs)
        folder = Path(os.path.commonpath([j.output for j in jobs]))
        with self.sharing(folder if len(jobs) > 1 else folder.parent):
            if self.kind == "ray" and self._folder is not None:
                jobs = [replace(j, caches=str(self._folder)) for j in jobs]
            return self._run_ray(jobs) if self.kind == "ray" else self._run_local(jobs)

    @contextlib.contextmanager
    def sharing(self, out: str | Path) -> Iterator[None]:
        """Inside, the runs of this executor share frozen-prefix caches: in this process's memory
        (local), or in ``<out>/.vprompt-caches`` (Ray; removed at the end). Nested scopes reuse the
        outermost (a sweep opens one around all its batches of runs)."""
        if not self.share_caches or shared_store() is not None or self._folder is not None:
            yield
            return
        if self.kind == "local":
            with sharing(SharedCaches()):
                yield
            return
        self._folder = Path(out) / SHARED_CACHES
        try:
            yield
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _say(self, done: int, total: int, outcome: Outcome, index: int) -> None:
        self._clock.done(outcome.status)
        if self.log is not None:
            self.log(f"[{done}/{total}] {describe(outcome, self._labels[index])}  {self._clock}")

    def _run_local(self, jobs: Sequence[Job]) -> list[Outcome]:
        outcomes = []
        for i, job in enumerate(jobs):
            outcomes.append(run_job(job))
            self._say(i + 1, len(jobs), outcomes[-1], i)
        return outcomes

    def _run_ray(self, jobs: Sequence[Job]) -> list[Outcome]:
        try:
            import ray
        except ImportError as e:
            raise RuntimeError("--engine ray needs Ray: pip install 'vprompt[ray]'") from e
        started = not ray.is_initialized()
        if started:  # "local" starts a fresh instance even where a stale `ray start` left its address behind
            address = self.address or os.environ.get("RAY_ADDRESS") or "local"
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        try:
            gpus = self.gpus if self.gpus is not None else min(1, ray.cluster_resources().get("GPU", 0))
            task = ray.remote(num_cpus=self.cpus, num_gpus=gpus, max_retries=0)(run_job)
            pending = {task.remote(job): i for i, job in enumerate(jobs)}
            outcomes: list[Outcome | None] = [None] * len(jobs)
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ref)
                try:
                    outcomes[i] = ray.get(ref)
                except Exception as e:  # the worker itself died (out of memory, killed node ...)
                    job = jobs[i]
                    write_text(RunDir(job.output) / ERROR, f"{type(e).__name__}: {e}\n")
                    outcomes[i] = Outcome(job.name, job.output, "failed", error=f"{type(e).__name__}: {e}")
                self._say(len(jobs) - len(pending), len(jobs), outcomes[i], i)
            return outcomes  # type: ignore[return-value]
        finally:
            if started:
                ray.shutdown()


def failures(outcomes: Sequence[Outcome], prefix: str = "") -> list[dict[str, str]]:
    """The failed outcomes as ``{"run", "output", "error"}`` (``run`` prefixed with ``prefix``)."""
    return [
        {"run": prefix + o.name, "output": o.output, "error": o.error or ""} for o in outcomes if not o.ok
    ]


def write_failures(out: str | Path, failed: Sequence[dict[str, str]]) -> None:
    """Write ``<out>/failures.json`` (or remove a stale one when nothing failed)."""
    path = Path(out) / FAILURES
    if failed:
        write_json(path, list(failed))
    else:
        path.unlink(missing_ok=True)
