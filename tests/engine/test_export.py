"""ONNX export: LoRA merged first (the bare backbone's graph), metadata for consumers, the missing extra."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

import vprompt
from tiny_runs import TINY
from vprompt.cli import main
from vprompt.engine.inference import export_onnx


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    options = dict(TINY, epochs=1)
    vprompt.train(**options, method="lora", method_options={"r": 4}, output=root / "lora")
    vprompt.train(**options, method="linear", output=root / "linear")
    return root


def test_lora_is_merged_before_export(runs, tmp_path):
    diffs = {m: export_onnx(runs / m, tmp_path / f"{m}.onnx") for m in ("lora", "linear")}
    nodes = {m: len(onnx.load(str(tmp_path / f"{m}.onnx")).graph.node) for m in diffs}
    assert nodes["lora"] == nodes["linear"]  # no LoRA branches left in the graph
    assert all(d is not None and d < 1e-4 for d in diffs.values()), diffs  # vs the unmerged model


def test_onnx_metadata_says_how_to_feed_the_model(runs, tmp_path):
    export_onnx(runs / "lora", tmp_path / "m.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["vprompt.class_names"]) == ["class_0", "class_1", "class_2", "class_3"]
    assert json.loads(meta["vprompt.input_size"]) == [3, 32, 32]
    assert len(json.loads(meta["vprompt.mean"])) == len(json.loads(meta["vprompt.std"])) == 3
    assert meta["vprompt.preprocessing"] == (
        "Compose( ToRGB() Resize(size=(32, 32), interpolation=bicubic, max_size=None, antialias=True) "
        "ToTensor() Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) )"
    )
    assert (meta["vprompt.method"], meta["vprompt.version"]) == ("lora", vprompt.__version__)


def test_export_names_the_extra_when_onnx_is_missing(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails
    assert main(["export", str(runs / "linear"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "vprompt export: error: ONNX export needs the onnx package: "
        "pip install 'vprompt[export]'  (onnx and onnxruntime)"
    )
