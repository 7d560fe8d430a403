"""Sweeps and the demo say how long they have run and about how long is left."""

from __future__ import annotations

from tiny_runs import TINY_SWEEP as TINY
from vprompt.tools.executors import Clock, Executor, Job, duration
from vprompt.tools.sweep import base_config


def test_the_estimate_counts_only_runs_that_trained():
    t = [100.0]
    clock = Clock(5, now=lambda: t[0])
    assert str(clock) == "elapsed 0s, left unknown yet"
    clock.done("reused")  # took no time: says nothing about the rate
    t[0] += 1
    assert clock.left() is None
    clock.done("trained")
    t[0] += 59  # 60 s for one trained run, three to go
    assert clock.left() == 180.0
    assert str(clock) == "elapsed 1m00s, about 3m00s left"
    clock.done("failed")  # a failed run took time too
    assert clock.left() == 60.0  # 60 s / 2 runs × 2 left
    clock.done("trained"), clock.done("trained")
    assert clock.left() == 0.0


def test_durations_read_as_hours_minutes_seconds():
    assert [duration(s) for s in (0, 59.4, 75, 3599, 4000)] == ["0s", "59s", "1m15s", "59m59s", "1h06m"]


def test_each_finished_run_logs_elapsed_and_eta(tmp_path):
    base = base_config({**TINY, "method": "linear", "epochs": 1})
    jobs = [Job.of(tmp_path, "a", base), Job.of(tmp_path, "b", base, lr=0.02)]
    logged: list[str] = []
    Executor(log=logged.append).run(jobs)
    assert len(logged) == 2
    assert logged[0].startswith("[1/2] a (synthetic:4x32 · linear · lr=0.05): trained (val ")
    assert logged[1].startswith("[2/2] b (synthetic:4x32 · linear · lr=0.02): trained (val ")
    assert "elapsed " in logged[0] and "left" in logged[0]
    assert logged[1].endswith("about 0s left")
