"""``benchmarks/gpu_check.py``: the CPU dry run of the GPU check passes, and the time budget stops it cleanly.

The dry run (``--device cpu --tiny``) runs every part on ViT-Tiny at 32 px, so the script cannot rot
between uses on a GPU; GPU-only numbers are never asserted here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load_gpu_check():
    """benchmarks/gpu_check.py is a script, not a package module: load it from its file."""
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.gpu_check
def test_cpu_dry_run_runs_every_part_and_passes(tmp_path):
    src = str(BENCHMARKS.parent / "src")
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--tiny"]
    result = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "versions: python" in result.stdout and "torch " in result.stdout
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["budget"]["stopped"] is None and out["checks_passed"] is True
    assert list(out["parts"]) == list(gpu_check.PARTS)
    tasks = [t for part in out["parts"].values() for t in part["tasks"]]
    assert [t["name"] for t in tasks if t["status"] != "ok"] == []
    # correctness: 3 checks per method, fp32 and bf16 for each of 2 cached methods, 2 DDP checks
    checks = [c for t in out["parts"]["correctness"]["tasks"] for c in t["value"]["checks"]]
    assert len(checks) == 3 * 5 + 2 * 2 + 2 and all(c["pass"] for c in checks)
    ddp = [c for c in checks if "DDP" in c["name"]]
    assert [c["update_rel_diff"] for c in ddp] == [0.0, 0.0]  # one gloo process: the plain run exactly
    # speed: every method (AP at 3 sites) at both batches, with the exact parameter counts of ViT-Tiny
    rows = [t["value"] for t in out["parts"]["speed"]["tasks"]]
    assert len(rows) == 13 * 2 and {r["batch"] for r in rows} == {4, 8}
    by = {(r["method"], r["options"].get("site"), r["batch"]): r for r in rows}
    assert by[("linear", None, 4)]["trainable_parameters"] == 192 * 10 + 10
    assert by[("ap", "block.9", 8)]["trainable_parameters"] == 5 * 192 + 192 * 10 + 10
    assert all(r["step_seconds"]["median"] > 0 and r["precision"] == "fp32" for r in rows)
    epochs = [t["value"] for t in out["parts"]["epoch"]["tasks"]]
    assert [e["cache"]["site"] for e in epochs] == ["block.9", "pre_logits"]
    assert all(e["epoch_images"] == 64 and e["epoch_seconds_cached"] > 0 for e in epochs)
    rates = [t["value"] for t in out["parts"]["loader"]["tasks"][1:]]
    assert [r["default"] for r in rates] == [False, True] and all(r["images"] == 32 for r in rates)
    (compiled,) = [t["value"] for t in out["parts"]["compile"]["tasks"]]
    assert compiled["backend"] == "eager" and compiled["compiled_step_seconds"] > 0
    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## 1. Correctness", "## 2. Speed", "## 3. Training epoch", "## 4. Data loader", "## 5."):
        assert heading in md
    assert "**FAIL**" not in md and "— finished" in md


def test_budget_skips_the_tasks_that_would_not_fit_and_writes_what_ran(tmp_path):
    clock = FakeClock()
    checker = gpu_check.Checker(tmp_path, gpu_check.Budget(2 + gpu_check.WRITE_MARGIN_S + 1.5, clock))

    def one_second(i):
        clock.now += 1.0
        return {"i": i}

    got = [checker.task("first", f"t{i}", lambda i=i: one_second(i)) for i in range(4)]
    checker.task("second", "later part", lambda: one_second(9))
    # t0 at 0 s, t1 at 1 s (1 s expected, 2.5 s left), t2 at 2 s: 1.5 s left, needs ~1 s -> runs;
    # t3 at 3 s: 0.5 s left -> skipped, and so is everything after it
    assert got == [{"i": 0}, {"i": 1}, {"i": 2}, None]
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = [t["status"] for p in out["parts"].values() for t in p["tasks"]]
    assert statuses == ["ok", "ok", "ok", "skipped", "skipped"]
    assert out["budget"]["stopped"].startswith("budget: 0.5 s left before first/t3 (needs ~1.0 s)")
    assert out["parts"]["first"]["seconds"] == 3.0
    assert "**stopped: budget" in (tmp_path / "gpu_check.md").read_text()


def test_a_task_interrupted_at_the_limit_is_recorded_and_nothing_starts_after_it(tmp_path):
    checker = gpu_check.Checker(tmp_path, gpu_check.Budget(100, FakeClock()))

    def runs_past_the_limit():
        raise gpu_check.BudgetExceeded()

    def fails():
        raise RuntimeError("CUDA error: an illegal memory access")

    assert checker.task("one", "broken", fails) is None
    assert checker.task("one", "slow", runs_past_the_limit) is None
    assert checker.task("one", "next", lambda: 1) is None
    tasks = checker.result()["parts"]["one"]["tasks"]
    assert [t["status"] for t in tasks] == ["error", "interrupted", "skipped"]
    assert tasks[0]["note"] == "RuntimeError: CUDA error: an illegal memory access"
    assert checker.failed()  # an error fails the check; the budget stop alone does not
    assert (
        json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["one"]["tasks"][1]["status"]
        == "interrupted"
    )


def test_the_armed_budget_interrupts_through_a_timer():
    budget = gpu_check.Budget(3600)
    budget.arm()
    try:
        assert 3500 < signal.getitimer(signal.ITIMER_REAL)[0] <= 3600 - gpu_check.WRITE_MARGIN_S
        with pytest.raises(gpu_check.BudgetExceeded):
            signal.getsignal(signal.SIGALRM)(signal.SIGALRM, None)
    finally:
        budget.disarm()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


@pytest.fixture(autouse=True)
def _environment_restored(monkeypatch):
    """gpu_check's main sets VPROMPT_EMULATED_BF16 on a CPU; no later test may inherit it."""
    monkeypatch.delenv("VPROMPT_EMULATED_BF16", raising=False)


def test_a_spent_budget_runs_nothing_and_exits_cleanly(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--budget-s", "0"]) == 0
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    tasks = [t for p in out["parts"].values() for t in p["tasks"]]
    assert tasks and {t["status"] for t in tasks} == {"skipped"}
    assert out["versions"]["torch"] and out["device"]["type"] == "cpu"
    assert "budget: 0.0 s left before correctness/ap" in capsys.readouterr().out
