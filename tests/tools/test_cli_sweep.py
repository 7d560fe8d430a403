"""``vprompt sweep`` and ``vprompt report`` on the command line (training faked where only wiring is tested)."""

from __future__ import annotations

import json

import pytest
from tiny_sweeps import FakeTrain, one_thread

from vprompt.cli import main
from vprompt.tools import executors

RUN_ARGS = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--random-init",
    "--img-size",
    "32",
    "--epochs",
    "1",
    "--no-progress",
    "--device",
    "cpu",
]
TINY_ARGS = [*RUN_ARGS, "--data", "synthetic:4x32"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def planted(config):
    if config["final"]:
        return {"test_accuracy": 60.0 + config["seed"]}
    if config["lr"] == 0.5:
        raise RuntimeError("planted failure")
    return {"val_accuracy": 90.0 if config["lr"] == 0.01 else 50.0, "val_loss": 1.0}


@pytest.fixture
def fake(monkeypatch):
    fake = FakeTrain(planted)
    monkeypatch.setattr(executors, "train", fake)
    return fake


def test_help_lists_sweep_and_report(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "sweep" in out and "report" in out


def test_tune_takes_grids_method_options_and_run_options(fake, tmp_path, capsys):
    out = tmp_path / "tune"
    argv = [
        "sweep",
        "tune",
        *TINY_ARGS,
        "--method",
        "ap",
        "--site",
        "block.5",
        "--shape",
        "channel",
        "--lr",
        "0.1,0.01",
        "--wd",
        "0",
        "1e-4",
        "--seeds",
        "2",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "**Test accuracy: 60.50 ± 0.71 (n=2)** with lr=0.01, weight decay=0;" in printed
    assert len(fake.calls) == 4 + 2 and all(c["epochs"] == 1 and c["img_size"] == 32 for c in fake.calls)
    assert all(c["method_options"] == {"site": "block.5", "shape": "channel"} for c in fake.calls)
    assert json.loads((out / "result.json").read_text())["chosen"]["weight_decay"] == 0.0


def test_a_failed_run_gives_exit_status_1(fake, tmp_path, capsys):
    argv = [
        "sweep",
        "tune",
        *TINY_ARGS,
        "--method",
        "linear",
        "--lr",
        "0.5",
        "0.01",
        "--seeds",
        "1",
        "--output",
        str(tmp_path),
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED (RuntimeError: planted failure)" in out and "1 run(s) failed" in out
    assert len(fake.calls) == 3  # the other grid point and the final run still ran


def test_suite_and_layers(fake, tmp_path, capsys):
    argv = [
        "sweep",
        "suite",
        "vtab1k",
        *RUN_ARGS,
        "--method",
        "linear",
        "--datasets",
        "svhn",
        "dtd",
        "--lr",
        "0.1",
        "0.01",
        "--seeds",
        "1",
        "--output",
        str(tmp_path / "suite"),
    ]
    assert main(argv) == 0
    assert {c["data"] for c in fake.calls} == {"vtab1k:svhn", "vtab1k:dtd"}
    assert "| svhn | 0.01 | 0 | 60.00 | 1 |" in capsys.readouterr().out
    argv = [
        "sweep",
        "layers",
        *TINY_ARGS,
        "--sites",
        "embed",
        "block.3",
        "--output",
        str(tmp_path / "layers"),
    ]
    assert main(argv) == 0
    assert [c["method_options"]["site"] for c in fake.calls[-2:]] == ["embed", "block.3"]
    # the same sweep for aap, with aap's own options
    argv = [
        *argv[:-1],
        str(tmp_path / "layers-aap"),
        "--method",
        "aap",
        "--hidden",
        "4",
        "--shape",
        "channel",
    ]
    assert main(argv) == 0
    assert [c["method"] for c in fake.calls[-2:]] == ["aap", "aap"]
    assert [c["method_options"] for c in fake.calls[-2:]] == [
        {"hidden": 4, "site": s, "shape": "channel"} for s in ("embed", "block.3")
    ]
    assert (tmp_path / "layers-aap" / "layers" / "aap-channel" / "block.3" / "summary.json").is_file()
    assert "# AAP layer preference (shape channel)" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    argv = ["sweep", "layers", *TINY_ARGS, "--sites", "block.99", "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "vprompt sweep: error: vit_tiny_patch16_224 has no site block.99" in capsys.readouterr().err
    argv = [
        "sweep",
        "tune",
        *TINY_ARGS,
        "--method",
        "ap",
        "--nope",
        "1",
        "--lr",
        "0.1",
        "--output",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "unknown option --nope 1 for method 'ap'" in capsys.readouterr().err
    # no abbreviations: --site is not --sites (nor a method option the sweep would override)
    assert main(["sweep", "layers", *TINY_ARGS, "--site", "embed", "--output", str(tmp_path)]) == 2
    assert "gives every run its site from --sites; --site is not an option" in capsys.readouterr().err
    argv = ["sweep", "layers", *TINY_ARGS, "--method", "vpt-deep", "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "sweep layers moves a site method (ap, aap), not 'vpt-deep'" in capsys.readouterr().err


def test_report_command(fake, tmp_path, capsys):
    main(
        [
            "sweep",
            "tune",
            *TINY_ARGS,
            "--method",
            "linear",
            "--lr",
            "0.01",
            "--seeds",
            "2",
            "--output",
            str(tmp_path / "runs"),
        ]
    )
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "3 runs in 2 configurations; 0 failed runs" in out
    assert (tmp_path / "runs" / "report" / "report.md").is_file()
    assert (tmp_path / "runs" / "report" / "results.csv").is_file()
