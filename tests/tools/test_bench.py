"""``vprompt bench``: method specs, what is measured, and the files written."""

from __future__ import annotations

import json

import pytest

from vprompt.cli import main
from vprompt.tools.bench import measure, parse_methods, quartiles

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
    assert row["trainable_parameters_without_head"] == 5 * 192  # 4 patches + CLS, 192 dims
    assert row["trainable_parameters"] == 5 * 192 + 192 * 10 + 10
    assert row["step_seconds"]["n"] == 2 and row["step_seconds"]["median"] > 0
    assert (
        row["inference_images_per_second"] > 0 and row["peak_memory_mib"] > row["memory_above_model_mib"] >= 0
    )


def test_bench_command_writes_table_json_and_plot(tmp_path, capsys):
    args = ["bench", "--backbone", TINY_VIT, "--img-size", "32", "--batch", "2", "--steps", "2"]
    assert main([*args, "--methods", "linear,vpt-deep:num_prompts=2", "--output", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["method"] for r in rows] == ["linear", "vpt-deep"]
    assert rows[0]["step_vs_linear"] == 1.0 and rows[1]["trainable_parameters_without_head"] == 12 * 2 * 192
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "| vpt-deep(num_prompts=2) | " in capsys.readouterr().out


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
