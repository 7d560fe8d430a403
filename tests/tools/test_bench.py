"""``vprompt bench``: method specs, what is measured (each speed figure next to its bound), and the
files written."""

from __future__ import annotations

import json

import pytest
import torch

import vprompt.tools.bench as bench_module
from vprompt.cli import main
from vprompt.tools.bench import (
    bench,
    cache_fields,
    floor_fields,
    interleaved_times,
    last_block_notes,
    measure,
    parse_methods,
    quartiles,
    table,
)

TINY_VIT = "vit_tiny_patch16_224"


def test_method_specs():
    assert parse_methods("ap:site=block.9:shape=channel, linear,lora:r=4") == [
        ("ap", {"site": "block.9", "shape": "channel"}),
        ("linear", {}),
        ("lora", {"r": 4}),
    ]
    with pytest.raises(ValueError, match="not key=value"):
        parse_methods("ap:block.9")


def test_quartiles():
    q = quartiles([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (q["median"], q["min"], q["n"]) == (3.0, 1.0, 5) and q["q1"] <= 3.0 <= q["q3"]


def test_measure_counts_and_defaults():
    row = measure(TINY_VIT, "ap", {}, batch=2, img_size=32, steps=2, warmup=1)
    assert row["options"] == {"site": "block.8"}  # three quarters of 12 blocks
    assert row["last_block"] == "CLS row only"
    assert row["unread_rows"].startswith("every row: ")  # AP replaces no rows
    assert row["trainable_parameters_without_head"] == 5 * 192  # 4 patches + CLS, 192 dims
    assert row["trainable_parameters"] == 5 * 192 + 192 * 10 + 10
    assert row["step_seconds"]["n"] == 2 and row["step_seconds"]["median"] > 0
    assert (
        row["inference_images_per_second"] > 0 and row["peak_memory_mib"] > row["memory_above_model_mib"] >= 0
    )
    # the bounds, from the same process: the bare backbone's forward, the prefix up to AP's site and
    # the suffix step from there
    step = row["step_seconds"]["median"]
    assert row["floor_site"] == "block.8" and row["forward_seconds"] > 0
    assert row["step_vs_forward"] == pytest.approx(step / row["forward_seconds"], rel=1e-12)
    assert row["prefix_seconds"] > 0 and row["suffix_seconds"] > 0
    assert row["floor_seconds"] == pytest.approx(row["prefix_seconds"] + row["suffix_seconds"], rel=1e-12)
    assert row["step_vs_floor"] == pytest.approx(step / row["floor_seconds"], rel=1e-12)


def test_the_rows_say_how_the_last_block_ran():
    rows = [
        {"method": "ap", "options": {"site": "block.8"}, "last_block": "CLS row only"},
        {"method": "vpt-deep", "options": {}, "last_block": "CLS row only"},
        {"method": "ap", "options": {"site": "block.11"}, "last_block": "all tokens: hooked"},
    ]
    assert last_block_notes(rows).splitlines() == [
        "Last block: CLS row only — ap(site=block.8), vpt-deep.",
        "Last block: all tokens: hooked — ap(site=block.11).",
    ]
    assert last_block_notes([{**rows[0], "last_block": "all tokens: not a timm VisionTransformer"}]) == ""


def test_a_method_acting_on_the_input_has_the_whole_step_as_its_floor():
    row = measure(TINY_VIT, "lora", {"r": 2}, batch=2, img_size=32, steps=2, warmup=1)
    assert row["floor_site"] == "input" and row["prefix_seconds"] == 0.0
    assert row["suffix_seconds"] == row["floor_seconds"] == row["step_seconds"]["median"]
    assert row["step_vs_floor"] == 1.0


def test_no_floor_where_the_backbone_cannot_resume_and_the_table_shows_dashes():
    """DeiT-distilled averages two heads: a linear probe's site (pre_logits) cannot be resumed from."""
    row = measure("deit_tiny_distilled_patch16_224", "linear", {}, batch=2, img_size=32, steps=1, warmup=1)
    assert row["floor_site"] == "pre_logits"
    for key in ("prefix_seconds", "suffix_seconds", "floor_seconds", "step_vs_floor"):
        assert row[key] is None, key
    assert row["forward_seconds"] > 0
    line = table([row]).splitlines()[-1]
    assert line.startswith("| linear | ") and f"| - | {row['step_vs_forward']:.2f} | - |" in line


def test_floor_and_cache_figures_are_the_quotients_of_the_medians():
    assert floor_fields(1.0, [0.25, 0.5, 0.75], [0.25, 0.125, 0.375]) == {
        "prefix_seconds": 0.5,
        "suffix_seconds": 0.25,
        "floor_seconds": 0.75,
        "step_vs_floor": 1.0 / 0.75,
    }
    assert floor_fields(2.0, [], [2.0]) == {
        "prefix_seconds": 0.0,
        "suffix_seconds": 2.0,
        "floor_seconds": 2.0,
        "step_vs_floor": 1.0,
    }
    row = {
        "floor_site": "block.8",
        "prefix_seconds": 0.75,
        "suffix_seconds": 0.25,
        "epoch_seconds_uncached": 6.0,
        "epoch_seconds_cached": 2.0,
        "cache": {"site": "block.8"},
    }
    # speed-up 3, bound (0.75 + 0.25) / 0.25 = 4
    assert cache_fields(row) == {"cache_speedup": 3.0, "cache_bound": 4.0, "cache_vs_bound": 0.75}
    none = dict.fromkeys(("cache_speedup", "cache_bound", "cache_vs_bound"))
    assert cache_fields(row | {"cache": {"site": None, "why": "off"}}) == none
    assert cache_fields(row | {"cache": {"site": "block.2"}})["cache_bound"] is None  # measured elsewhere


def test_timings_alternate_in_rounds_every_other_one_reversed():
    calls = []
    times = interleaved_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        steps=5,
        warmup=1,
        device=torch.device("cpu"),
        rounds=2,
        prepare=lambda name: calls.append(f"prepare {name}"),
    )
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5}
    assert calls == [
        *["prepare a", "a", "a", "a", "a"],  # one warm-up call, then 3 timed
        *["prepare b", "b", "b", "b", "b"],
        *["prepare b", "b", "b"],  # the second round in reverse order
        *["prepare a", "a", "a"],
    ]


def test_epoch_speedup_next_to_its_bound_at_the_bench_batch(monkeypatch):
    batches = []
    real = bench_module.epoch_times
    monkeypatch.setattr(
        bench_module, "epoch_times", lambda *a, **k: batches.append(k["batch"]) or real(*a, **k)
    )
    (row,) = bench(TINY_VIT, [("ap", {})], batch=4, img_size=32, steps=2, warmup=1, epoch_images=32)
    assert batches == [4] and row["cache"]["site"] == row["floor_site"] == "block.8"
    speedup = row["epoch_seconds_uncached"] / row["epoch_seconds_cached"]
    bound = (row["prefix_seconds"] + row["suffix_seconds"]) / row["suffix_seconds"]
    assert row["cache_speedup"] == pytest.approx(speedup, rel=1e-12)
    assert row["cache_bound"] == pytest.approx(bound, rel=1e-12)
    assert row["cache_vs_bound"] == pytest.approx(speedup / bound, rel=1e-12)
    head, _, line = table([row]).splitlines()
    assert head.endswith("| epoch s (cached / uncached) | speed-up | bound | ÷ bound |")
    assert line.endswith(f"| {speedup:.2f} | {bound:.2f} | {speedup / bound:.2f} |")


def test_bench_command_writes_table_json_and_plot(tmp_path, capsys):
    args = ["bench", "--backbone", TINY_VIT, "--img-size", "32", "--batch-size", "2", "--steps", "2"]
    assert main([*args, "--methods", "linear,vpt-deep:num_prompts=2", "--output", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["method"] for r in rows] == ["linear", "vpt-deep"]
    assert rows[0]["step_vs_linear"] == 1.0 and rows[1]["trainable_parameters_without_head"] == 12 * 2 * 192
    assert [r["floor_site"] for r in rows] == ["pre_logits", "embed"]
    for r in rows:
        assert r["floor_seconds"] == pytest.approx(r["prefix_seconds"] + r["suffix_seconds"], rel=1e-12)
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md", "bench.png"]  # no temps
    out = capsys.readouterr().out
    assert "| × linear | × forward | × floor | " in out and "| vpt-deep(num_prompts=2) | " in out
    vpt = rows[1]
    assert f"| {vpt['step_vs_forward']:.2f} | {vpt['step_vs_floor']:.2f} | " in out


def test_measure_in_mixed_precision_and_compiled():
    """Steps run in the precision asked (``auto``: fp32 on a CPU, bf16 on a GPU), with the fp16 gradient
    scaler where it applies, and optionally through torch.compile (its first, compiling step apart)."""
    assert measure(TINY_VIT, "linear", {}, batch=2, img_size=32, steps=1, warmup=1)["precision"] == "fp32"
    row = measure(TINY_VIT, "ap", {}, batch=2, img_size=32, steps=2, warmup=1, precision="fp16")
    assert row["precision"] == "fp16" and row["train_images_per_second"] > 0
    compiled = measure(
        TINY_VIT, "linear", {}, batch=2, img_size=32, steps=1, warmup=1, compile_backend="eager"
    )
    assert compiled["compile"] == "eager" and compiled["first_step_seconds"] > 0


def test_bench_in_bf16_on_a_cpu(monkeypatch):
    monkeypatch.setenv("VPROMPT_EMULATED_BF16", "1")  # the fresh process may run on a CPU without bf16
    (row,) = bench(TINY_VIT, [("linear", {})], batch=2, img_size=32, steps=1, warmup=1, precision="bf16")
    assert row["precision"] == "bf16" and row["step_seconds"]["n"] == 1
