"""Foreseeable failures on the command line end in one clear line (exit 2, or 130 for Ctrl-C), never a
traceback; method options the outer parser could swallow reach the method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vprompt
from tiny_runs import TINY
from vprompt.cli import build_parser, error_line, main
from vprompt.cli.train import method_options

TINY_ARGS = ["--backbone", TINY["backbone"], "--img-size", "32", "--data", TINY["data"], "--random-init"]
TINY_ARGS += ["--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    vprompt.train(**dict(TINY, method="linear", epochs=1), output=run)
    return run


def one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"vprompt {command}: ")
    return err


def test_short_method_options_are_not_taken_for_run_options():
    """`--r` (lora, adapter) used to be 'ambiguous' (prefix of --resume, --root, --random-init ...)."""
    args, extra = build_parser().parse_known_args(["train", "--method", "lora", "--r", "4"])
    assert extra == ["--r", "4"] and args.resume is False and args.root is None
    assert method_options("lora", extra) == {"r": 4}
    assert method_options("adapter", ["--r", "2"]) == {"r": 2}


def test_the_random_label_mapping_has_its_own_seed():
    args, extra = build_parser().parse_known_args(
        ["train", "--method", "vp-pad", "--mapping", "rlm", "--seed", "5", "--mapping-seed", "7"]
    )
    assert args.seed == 5  # the run's seed
    assert method_options("vp-pad", extra) == {"mapping": "rlm", "mapping_seed": 7}


def test_ctrl_c_prints_one_line_that_says_how_to_resume(capsys, monkeypatch, tmp_path):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("vprompt.engine.train", interrupted)
    code = main(["train", *TINY_ARGS, "--method", "linear", "--output", str(tmp_path / "r")])
    assert code == 130
    err = one_line(capsys, "train")
    assert "interrupted" in err and f"vprompt train --resume {tmp_path / 'r'}" in err


def test_an_output_that_is_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    assert main(["train", *TINY_ARGS, "--method", "linear", "--output", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in one_line(capsys, "train")


def test_export_to_a_folder_is_one_line(capsys, finished, tmp_path):
    assert main(["export", str(finished), "--onnx", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in one_line(capsys, "export")


def test_predict_top_must_be_positive(capsys, finished):
    image = Path(__file__).parent / "x.png"
    assert main(["predict", str(finished), str(image), "--top", "-1"]) == 2
    assert "top must be at least 1" in one_line(capsys, "predict")


def test_a_damaged_summary_or_adapter_config_names_its_file(capsys, finished, tmp_path):
    import shutil

    run = tmp_path / "runs" / "copy"
    shutil.copytree(finished, tmp_path / "runs" / "good")
    shutil.copytree(finished, run)
    (run / "summary.json").write_text("{not json")
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "rep")]) == 0  # goes on
    report = (tmp_path / "rep.md").read_text() if (tmp_path / "rep.md").exists() else ""
    report += (
        "".join(p.read_text() for p in (tmp_path / "rep").glob("*.md")) if (tmp_path / "rep").is_dir() else ""
    )
    assert "summary.json: not valid JSON" in report
    capsys.readouterr()
    config = json.loads((run / "adapter" / "vprompt_config.json").read_text())
    del config["backbone"]["build_args"]
    (run / "adapter" / "vprompt_config.json").write_text(json.dumps(config))
    assert main(["eval", str(run)]) == 2
    err = one_line(capsys, "eval")
    assert "vprompt_config.json: damaged adapter config (missing or wrong: backbone.build_args)" in err


def test_a_dataloader_worker_traceback_is_reduced_to_the_original_message():
    message = (
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nvprompt.data.datasets.DataError: /data/cat/1.jpg: cannot decode image\n'
    )
    assert error_line(ValueError(message)) == "/data/cat/1.jpg: cannot decode image"


def test_a_file_name_that_is_not_utf8_is_printed_escaped(capsys):
    line = error_line(ValueError("/data/bild-\udcff.jpg: cannot decode image"))
    line.encode("utf-8")  # printable
    assert "bild-\\udcff.jpg" in line


def test_an_export_the_exporter_cannot_do_prints_one_line_not_the_graph(capfd, tmp_path):
    """vp-expansive's antialiased resize has no ONNX op: the exporter used to dump ~700 lines of IR."""
    run = tmp_path / "vpx"
    vprompt.train(
        **dict(TINY, method="vp-expansive", method_options={"inner_size": 16}, epochs=1), output=run
    )
    capfd.readouterr()
    code = main(["export", str(run), "--onnx", str(tmp_path / "m.onnx")])
    out, err = capfd.readouterr()
    assert out.count("\n") <= 1  # "wrote ..." at most, never the graph
    if code == 2:
        assert err.count("\n") == 1 and "cannot export vp-expansive to ONNX" in err
    else:
        assert code == 0 and (tmp_path / "m.onnx").is_file()
