"""Figures for a paper: formats and size, captions, n and spread, honest ranges, depth, empty panels."""

from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vprompt.cli import main
from vprompt.tools import plots

SERIES = {"ap channel": [("embed", 58.0, 1.0, 3), ("block.3", 60.0, 0.5, 3), ("block.9", 59.0, None, 1)]}


def axes():
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def test_accuracy_axes_span_at_least_ten_points_within_0_and_100():
    ax = axes()
    plots.accuracy_range(ax, 58.0, 60.0)  # a 2-point spread on 100 images
    low, high = ax.get_ylim()
    assert high - low >= 10 and low < 58 and high > 60
    plots.accuracy_range(ax, 97.0, 100.0)
    assert ax.get_ylim() == pytest.approx((88.0, 100.24))  # 100 % stays inside the frame
    plots.accuracy_range(ax, 20.0, 80.0)
    assert ax.get_ylim() == pytest.approx((14.0, 86.0))


def test_sites_are_placed_by_depth():
    assert plots.site_depths(["embed", "block.3", "block.9", "pre_logits"]) == {
        "embed": 1.0,
        "block.3": 5.0,
        "block.9": 11.0,
        "pre_logits": 12.0,
    }
    assert plots.site_depths(["stage.1", "block.0"]) == {"block.0": 0.0, "stage.1": 1.0}  # two numberings


def test_layer_plot_in_every_format_with_caption_reference_and_n(tmp_path):
    first = plots.layer_preference(
        SERIES,
        tmp_path / "layers.png",
        references={"linear probe (n=3)": (57.0, 0.4)},
        caption="fashion-mnist · offline:efficientnet_lite0 · 64 px · 2000 training images · 5 epochs",
        formats=("png", "pdf", "svg"),
        size=(3.5, 2.6),
    )
    assert first == tmp_path / "layers.png"
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "layers.pdf").read_bytes()[:4] == b"%PDF"
    svg = (tmp_path / "layers.svg").read_text()
    assert 'width="252pt" height="187.2pt"' in svg  # 3.5 × 2.6 inches
    for text in (
        "64 px · 2000 training images · 5 epochs",
        "linear probe (n=3)",
        "ap channel (n=1–3, ± std)",
    ):
        assert text in svg, text
    with pytest.raises(ValueError, match="plot formats must be among png, pdf, svg, got jpg"):
        plots.layer_preference(SERIES, tmp_path / "x.png", formats=("jpg",))


def test_tradeoff_panels_say_why_they_are_empty(tmp_path):
    one = [{"label": "linear", "accuracy": 82.9, "trainable_parameters": 12810, "train_seconds": 6.0}]
    plots.tradeoffs(one, ["trainable_parameters", "peak_memory_mib"], tmp_path / "t.png", formats=("svg",))
    svg = (tmp_path / "t.svg").read_text()
    assert "one configuration only (linear: 82.9%):" in svg and "nothing to compare" in svg
    assert "no configuration records its peak memory (MiB)" in svg
    two = one + [
        {"label": "ap", "accuracy": 83.1, "accuracy_std": 0.3, "n": 3, "trainable_parameters": 29194}
    ]
    plots.tradeoffs(two, ["trainable_parameters"], tmp_path / "u.png", formats=("svg",))
    svg = (tmp_path / "u.svg").read_text()
    assert "nothing to compare" not in svg and "ap (n=3)" in svg


def test_report_cli_takes_formats_and_size(tmp_path, capsys):
    import vprompt
    from tiny_runs import TINY_SWEEP as TINY

    for seed in (0, 1):
        vprompt.train(**dict(TINY, seed=seed), method="linear", output=tmp_path / "runs" / f"s{seed}")
    vprompt.train(**TINY, method="ap", method_options={"site": "block.5"}, output=tmp_path / "runs" / "ap")
    out = tmp_path / "rep"
    assert (
        main(
            [
                "report",
                str(tmp_path / "runs"),
                "--output",
                str(out),
                "--plot-format",
                "png,svg",
                "--plot-size",
                "4x3",
            ]
        )
        == 0
    )
    assert (out / "accuracy_vs_parameters.png").is_file() and (out / "accuracy_vs_cost.svg").is_file()
    assert "linear (n=2)" in (out / "accuracy_vs_parameters.svg").read_text()
    assert main(["report", str(tmp_path / "runs"), "--output", str(out), "--plot-size", "big"]) == 2
    assert "--plot-size 'big': expected WIDTHxHEIGHT" in capsys.readouterr().err
