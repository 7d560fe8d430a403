"""The demo's pipeline end to end on a tiny budget: real EfficientNet-Lite0 weights, real Fashion-MNIST."""

from __future__ import annotations

import pytest

from vprompt.cli import main
from vprompt.tools.demo import METHODS

pytestmark = pytest.mark.offline_weights


def test_demo_runs_every_method_and_writes_its_report(tmp_path, capsys):
    args = ["demo", "--output", str(tmp_path), "--train-size", "40", "--eval-size", "20"]
    assert main([*args, "--img-size", "32", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "ImageNet top-1 on the 20 real validation photos shipped with foolbox: 18/20" in out
    assert "40 training and 20 test images" in out and "32×32 px, 1 epochs" in out
    for method, *_ in METHODS:
        assert (tmp_path / "runs" / method / "summary.json").is_file()
        assert f"| {method}" in out
    readme = (tmp_path / "README.md").read_text()
    assert "| method | test accuracy (%) | trainable params |" in readme
    assert (tmp_path / "report" / "report.md").is_file()
    assert list((tmp_path / "report").glob("*.png"))
    # again: every finished run is reused, nothing is trained
    assert main([*args, "--img-size", "32", "--epochs", "1"]) == 0
    assert capsys.readouterr().out.count("(reused)") == len(METHODS)


def test_demo_trains_again_where_its_options_changed(tmp_path):
    """The demo owns its folder: a finished run made with other options (an earlier version's learning
    rate) is trained again instead of stopping the demo with an error."""
    from vprompt.engine.rundir import RunDir
    from vprompt.tools.demo import Budget, run_demo

    logs: list[str] = []
    budget = Budget(train_size=20, eval_size=10, img_size=32, epochs=1, batch_size=10)
    run_demo(tmp_path, budget, methods=[("linear", {}, "sgd", 0.03)], log=logs.append)
    run_demo(tmp_path, budget, methods=[("linear", {}, "sgd", 0.01)], log=logs.append)
    assert any("options changed (lr: 0.03 → 0.01): training again" in line for line in logs)
    assert RunDir(tmp_path / "runs" / "linear").read_config()["lr"] == 0.01


def test_demo_fresh_deletes_only_its_own_run_files(tmp_path):
    """`--fresh` used to delete all of <output>/runs, a user's results with it."""
    from vprompt.tools.demo import Budget, run_demo

    budget = Budget(train_size=20, eval_size=10, img_size=32, epochs=1, batch_size=10)
    mine = tmp_path / "runs" / "mine" / "results.csv"
    mine.parent.mkdir(parents=True)
    mine.write_text("a,b\n")
    run_demo(tmp_path, budget, methods=[("linear", {}, "sgd", 0.03)], log=lambda _: None)
    logs: list[str] = []
    run_demo(tmp_path, budget, methods=[("linear", {}, "sgd", 0.03)], fresh=True, log=logs.append)
    assert mine.read_text() == "a,b\n" and not any("reused" in line for line in logs)
    # a user's file inside a demo run folder: the folder is refused, not deleted
    (tmp_path / "runs" / "linear" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        run_demo(tmp_path, budget, methods=[("linear", {}, "sgd", 0.01)], log=lambda _: None)
    assert (tmp_path / "runs" / "linear" / "notes.txt").read_text() == "keep me"
