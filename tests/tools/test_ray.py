"""The Ray executor: one task per run on a local Ray instance, with the same reuse and failure isolation."""

from __future__ import annotations

import pytest

from tiny_runs import TINY_SWEEP as TINY
from vprompt.tools.executors import Executor, Job
from vprompt.tools.sweep import base_config

ray = pytest.importorskip("ray")


def test_ray_runs_one_task_per_run_and_isolates_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    base = base_config({**TINY, "method": "ap", "site": "block.5", "final": True})
    jobs = [Job.of(tmp_path, "good", base), Job.of(tmp_path, "bad", base, lr=-1.0)]
    logged = []
    outcomes = Executor("ray", log=logged.append).run(jobs)
    assert not ray.is_initialized()  # the executor stopped the local instance it started
    assert [(o.name, o.status) for o in outcomes] == [("good", "trained"), ("bad", "failed")]
    assert outcomes[0].summary["test_accuracy"] is not None and len(logged) == 2
    assert "lr must be positive" in outcomes[1].error and (tmp_path / "bad" / "error.txt").is_file()
    # what the Ray tasks wrote are ordinary run directories: a local re-run reuses the finished one
    again = Executor(log=None).run(jobs)
    assert [o.status for o in again] == ["reused", "failed"] and again[0].summary == outcomes[0].summary
