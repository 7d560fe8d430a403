"""Class names travel with adapters and exports; ``vprompt.predict`` / ``vprompt predict`` label images."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import vprompt
from tiny_runs import TINY
from vprompt.cli import main

NAMES = ["apple", "bean", "cherry", "date"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run whose data (synthetic:4x32) is given class names through a Dataset."""
    from vprompt.data import load

    class Named(list):
        classes = NAMES

    pil = load("synthetic:4x32", None, "trainval", None)  # PIL images, labels 0..3
    out = tmp_path_factory.mktemp("runs") / "run"
    vprompt.train(
        **dict(TINY, data=Named(pil[i] for i in range(len(pil))), method="linear", epochs=1), output=out
    )
    return out


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of images in nested folders, with a hidden file and a text file that are not images."""
    root = tmp_path_factory.mktemp("pictures")
    for i, name in enumerate(["b.png", "a.jpg", "sub/c.png", "sub/deeper/d.bmp"]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    Image.new("RGB", (4, 4)).save(root / ".hidden.png")
    return root


def test_class_names_travel_with_the_adapter_and_from_pretrained_reads_a_run_folder(run, tmp_path):
    saved = json.loads((run / "adapter" / "vprompt_config.json").read_text())
    assert saved["class_names"] == NAMES and saved["id2label"] == {
        "0": "apple",
        "1": "bean",
        "2": "cherry",
        "3": "date",
    }
    model = vprompt.TunedModel.from_pretrained(run)  # the run folder: its adapter/
    assert model.class_names == NAMES and model.id2label == dict(enumerate(NAMES))
    assert vprompt.load_adapter(run / "adapter").class_names == NAMES
    model.save_pretrained(tmp_path / "again")
    assert vprompt.load_adapter(tmp_path / "again").class_names == NAMES
    with pytest.raises(ValueError, match="3 class names for a model of 4 classes"):
        model.class_names = NAMES[:3]
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("method: linear\n")
    with pytest.raises(FileNotFoundError) as e:
        vprompt.TunedModel.from_pretrained(tmp_path / "unfinished")
    assert str(e.value) == (
        f"{tmp_path / 'unfinished'} is a run folder without {tmp_path / 'unfinished' / 'adapter'}: the run "
        "has not finished (vprompt.load_run reads finished runs)"
    )


def test_an_adapter_saved_before_class_names_gets_them_from_its_run(run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run, old)
    config = json.loads((old / "adapter" / "vprompt_config.json").read_text())
    for key in ("class_names", "id2label", "preprocessing"):
        del config[key]
    (old / "adapter" / "vprompt_config.json").write_text(json.dumps(config))
    assert vprompt.load_adapter(old / "adapter").class_names is None
    assert vprompt.load_run(old).class_names == NAMES
    config["class_names"] = "apple"
    (old / "adapter" / "vprompt_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="damaged adapter config .*class_names"):
        vprompt.load_adapter(old / "adapter")


def test_predict_takes_a_run_or_a_model_and_images_files_or_folders(run, pictures):
    found = vprompt.predict(run, pictures, top=2)
    assert [path for path, _ in found] == [
        str(pictures / p) for p in ("a.jpg", "b.png", "sub/c.png", "sub/deeper/d.bmp")
    ]  # recursive, sorted, images only
    for _, ranked in found:
        assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1] and {n for n, _ in ranked} <= set(NAMES)
    model = vprompt.load_run(run)
    image = Image.open(pictures / "b.png")
    [(path, ranked)] = vprompt.predict(model, image, top=10)
    assert path is None and len(ranked) == 4 and sum(p for _, p in ranked) == pytest.approx(1.0)
    by_file = dict(vprompt.predict(model, [pictures / "b.png"], top=4)[0][1])
    assert by_file == pytest.approx(dict(ranked))  # the same preprocessing for a file and a PIL image
    assert vprompt.predict(run, str(pictures / "b.png"), top=4)[0][1] == list(by_file.items())


def test_cli_predict_writes_text_json_and_csv(run, pictures, tmp_path, capsys):
    assert main(["predict", str(run), str(pictures), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{pictures / 'a.jpg'}: ")
    assert main(["predict", str(run), str(pictures / "sub"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [
        str(pictures / "sub" / "c.png"),
        str(pictures / "sub" / "deeper" / "d.bmp"),
    ]
    assert [len(r["top"]) for r in rows] == [4, 4] and set(rows[0]["top"][0]) == {"class", "probability"}
    out = tmp_path / "p.csv"
    assert (
        main(["predict", str(run), str(pictures), "--top", "3", "--format", "csv", "--output", str(out)]) == 0
    )
    assert capsys.readouterr().out == f"wrote {out} (4 images)\n"
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(table[0]) == ["path", "rank", "class", "probability"] and len(table) == 4 * 3
    assert [r["rank"] for r in table[:3]] == ["1", "2", "3"] and table[0]["class"] in NAMES
    assert float(table[0]["probability"]) == pytest.approx(rows_for(run, pictures / "a.jpg"), abs=1e-6)


def rows_for(run, image):
    return vprompt.predict(run, image, top=1)[0][1][0][1]


@pytest.mark.parametrize(
    "given, message",
    [
        ("missing.png", "missing.png: no such image file or folder"),
        ("empty", "empty: no images in this folder (.bmp, .gif,"),
    ],
)
def test_cli_predict_errors_are_one_line(run, tmp_path, capsys, given, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    assert main(["predict", str(run), str(tmp_path / given)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vprompt predict: error: {tmp_path / message}"), err


def test_onnx_export_carries_the_class_names_and_id2label(run, tmp_path):
    import onnx

    from vprompt.engine.inference import export_onnx

    export_onnx(run, tmp_path / "m.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["vprompt.class_names"]) == NAMES
    assert json.loads(meta["vprompt.id2label"]) == {str(i): n for i, n in enumerate(NAMES)}
