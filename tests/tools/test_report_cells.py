"""`vprompt report` never averages what does not belong together: means (tables and plots) only over a
common set of (dataset, backbone) cells, named inside the figure; no mean plot when there is none; a
backbone column in every table. And an --output that is a file or a dangling link is one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vprompt.cli import main
from vprompt.files import WriteError
from vprompt.tools import report

PARAMS = {"ap": 1_000, "lora": 20_000, "vapt": 5_000}


def run(root: Path, method: str, data: str, backbone: str, accuracy: float, seed: int = 0) -> None:
    """A finished run folder as the report reads it: only ``summary.json``."""
    folder = root / f"{method}-{data}-{backbone}-{seed}"
    folder.mkdir(parents=True)
    summary = {
        "backbone": backbone,
        "method": method,
        "method_options": {},
        "data": data,
        "final": True,
        "seed": seed,
        "test_accuracy": accuracy,
        "trainable_parameters": PARAMS[method],
        "trainable_parameters_without_head": PARAMS[method] - 100,
        "train_seconds": 10.0,
        "peak_memory_mib": 100.0,
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def test_no_common_cell_no_mean_plot_and_the_report_says_why(tmp_path):
    runs = tmp_path / "runs"
    run(runs, "ap", "d1", "vit_a", 50.0)
    run(runs, "lora", "d2", "vit_a", 60.0)
    for data, backbone in (("d1", "vit_b"), ("d2", "vit_b"), ("d3", "vit_a")):
        run(runs, "vapt", data, backbone, 70.0)
    result = report.write_report([runs], tmp_path / "rep", formats=("svg",))
    assert "accuracy_vs_parameters" not in result["files"] and "accuracy_vs_cost" not in result["files"]
    assert not list((tmp_path / "rep").glob("accuracy_vs_*"))
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "No accuracy-vs-cost plots: the configurations share no (dataset, backbone) cell" in text
    assert "ap: d1 on vit_a; lora: d2 on vit_a; vapt: d1 on vit_b, d2 on vit_b, d3 on vit_a" in text
    table = text.split("## Test accuracy")[1].split("###")[0]
    assert "| dataset | backbone | ap | lora | vapt |" in table
    assert "| d1 | vit_a | 50.00 | – | – |" in table and "| d1 | vit_b | – | – | 70.00 |" in table
    assert "| **mean** of 5 | (rows above) | – | – | – |" in table  # no configuration ran on every cell
    details = text.split("### Every configuration")[1]
    assert "| dataset | backbone | configuration |" in details and "| d2 | vit_b | vapt |" in details


def test_means_are_over_the_common_cells_only_and_the_figure_names_them(tmp_path):
    runs = tmp_path / "runs"
    for data, accuracy in (("d1", 50.0), ("d2", 54.0)):
        run(runs, "ap", data, "vit_a", accuracy)
    for data, accuracy in (("d1", 60.0), ("d2", 64.0), ("d3", 10.0)):  # d3: only lora ran there
        run(runs, "lora", data, "vit_a", accuracy)
    for data, backbone, accuracy in (("d1", "vit_a", 70.0), ("d2", "vit_a", 72.0), ("d1", "vit_b", 0.0)):
        run(runs, "vapt", data, backbone, accuracy)
    result = report.write_report([runs], tmp_path / "rep", formats=("svg",))
    points, common = report.tradeoff_points([r for r in result["rows"] if r["split"] == "test"])
    assert common == [("d1", "vit_a"), ("d2", "vit_a")]
    assert {p["label"]: p["accuracy"] for p in points} == {"ap": 52.0, "lora": 62.0, "vapt": 71.0}
    for name in ("accuracy_vs_parameters.svg", "accuracy_vs_cost.svg"):
        svg = (tmp_path / "rep" / name).read_text()
        assert "test accuracy, mean over d1 on vit_a, d2 on vit_a" in svg, name  # inside the figure
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "averaged over the same 2 (dataset, backbone) cell(s): d1 on vit_a, d2 on vit_a" in text


def test_many_common_cells_are_counted_in_the_figure(tmp_path):
    runs = tmp_path / "runs"
    for i in range(6):
        run(runs, "ap", f"d{i}", "vit_a", 50.0)
        run(runs, "lora", f"d{i}", "vit_a", 60.0)
    report.write_report([runs], tmp_path / "rep", formats=("svg",))
    svg = (tmp_path / "rep" / "accuracy_vs_parameters.svg").read_text()
    assert "test accuracy, mean over 6 (dataset, backbone) cells, listed in report.md" in svg


def test_an_output_that_is_a_file_or_a_dangling_link_is_one_clear_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    run(runs, "ap", "d1", "vit_a", 50.0)
    file = tmp_path / "report.txt"
    file.write_text("mine\n")
    with pytest.raises(
        WriteError, match=f"^cannot use {file} as a report folder .* it is a file, not a folder"
    ):
        report.write_report([runs], file)
    link = tmp_path / "gone"
    os.symlink(tmp_path / "nowhere", link)
    assert main(["report", str(runs), "--output", str(link)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"vprompt report: error: cannot use {link} as a report folder (--output): it is a broken symlink "
        f"(to {str(tmp_path / 'nowhere')!r}); remove it or choose another path\n"
    )
    assert main(["report", str(runs), "--output", str(file)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and file.read_text() == "mine\n"
    assert not (tmp_path / "nowhere").exists()
