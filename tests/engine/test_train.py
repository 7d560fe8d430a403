"""A run end to end: its directory, its summary, selection, evaluation, prediction, export, errors."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch
import yaml

import vprompt
from tiny_runs import TINY, same_weights, weights
from vprompt.cli import main
from vprompt.engine import trainer as trainer_module
from vprompt.engine.rundir import RunDir


@pytest.fixture
def tiny():
    return dict(TINY)


def test_run_directory_holds_everything(tiny, tmp_path):
    out = tmp_path / "run"
    summary = vprompt.train(**tiny, method="ap", method_options={"site": "block.5"}, final=True, output=out)
    assert {p.name for p in out.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
        "adapter",
    }
    config = yaml.safe_load((out / "config.yaml").read_text())
    resolved = config["resolved"]
    assert config["method_options"] == {"site": "block.5", "shape": "full"}
    assert config["protocol"] == "vp" and resolved["data"]["splits"] == {
        "train": "trainval",
        "val": None,
        "test": "test",
    }
    assert resolved["normalisation"] == {"mean": [0.5] * 3, "std": [0.5] * 3}  # the backbone's own
    assert resolved["selection"] == "final" and resolved["seed"] == 0 and resolved["peak_lr"] == 0.05
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["lr"] == pytest.approx(0.0)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["trainable_parameters"] == 5 * 192 + (192 * 4 + 4)  # AP on 5 tokens × 192, + head
    assert summary["trainable_parameters_without_head"] == 5 * 192
    assert summary["total_parameters"] > 5_000_000 and summary["test_accuracy"] > 50
    assert summary["versions"]["torch"] == torch.__version__ and summary["device"]["type"] == "cpu"
    assert summary["device"]["kernels"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX512, AVX2
    for key in ("train_seconds", "peak_memory_mib", "eval_images_per_second"):
        assert summary[key] > 0
    # the adapter holds the trainable state only, and reloads to the same test accuracy
    assert set(weights(out)) == {"method.prompt", "backbone.model.head.weight", "backbone.model.head.bias"}
    again = vprompt.evaluate_run(out, split="test", device="cpu")
    assert again["accuracy"] == pytest.approx(summary["test_accuracy"]) and again["images"] == 32


def test_tuning_run_never_touches_test(tiny, tmp_path, monkeypatch):
    evaluated = []
    original = trainer_module.Trainer.evaluate

    def spy(self, dataset, **options):
        evaluated.append("test" if dataset is self.data.test else "val")
        return original(self, dataset, **options)

    monkeypatch.setattr(trainer_module.Trainer, "evaluate", spy)
    summary = vprompt.train(**tiny, method="linear", output=tmp_path / "tune")
    assert "test_accuracy" not in summary and summary["accuracy"] == summary["val_accuracy"]
    assert "test" not in evaluated
    evaluated.clear()
    vprompt.train(**tiny, method="linear", final=True, output=tmp_path / "final")
    assert evaluated == ["test"]  # once, at the end


def test_best_val_selects_by_validation(tiny, tmp_path, monkeypatch):
    """A planted run whose validation accuracy peaks early: best-val keeps that epoch's weights."""
    planted = {1: 40.0, 2: 90.0, 3: 60.0, 4: 70.0}
    original = trainer_module.Trainer.evaluate

    def planted_val(self, dataset, **options):  # during epoch e, progress.epoch is e - 1
        result = original(self, dataset, **options)
        if dataset is self.data.val and self.progress.epoch + 1 in planted:
            result["accuracy"] = planted[self.progress.epoch + 1]
        return result

    monkeypatch.setattr(trainer_module.Trainer, "evaluate", planted_val)
    snapshots = {}
    original_fit = trainer_module.Trainer.train_epoch

    def remember(self, bar):
        row = original_fit(self, bar)
        snapshots[self.progress.epoch + 1] = {
            k: v.clone() for k, v in self.model.trainable_state_dict().items()
        }
        return row

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", remember)
    options = dict(tiny, epochs=4, selection="best-val", val_split="val", train_split="train", final=True)
    summary = vprompt.train(**options, method="ap", method_options={"site": "block.3"}, output=tmp_path / "r")
    assert summary["selected_epoch"] == 2
    kept = weights(tmp_path / "r")
    for k, v in kept.items():
        assert torch.equal(v, snapshots[2][k]), k
    assert not torch.equal(kept["method.prompt"], snapshots[4]["method.prompt"])
    assert "test_accuracy" in summary  # the test split is evaluated after selection


def test_predict_and_export(tiny, tmp_path):
    from PIL import Image

    from vprompt.engine.inference import export_onnx, predict

    out = tmp_path / "run"
    vprompt.train(**tiny, method="vapt", method_options={"num_prompts": 2}, output=out)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    [(path, ranked)] = predict(out, [image], top=2)
    assert path == str(image)
    assert len(ranked) == 2 and ranked[0][0].startswith("class_") and ranked[0][1] >= ranked[1][1]
    diff = export_onnx(out, tmp_path / "model.onnx")
    assert diff is not None and diff < 1e-4


def test_label_mapping_run_uses_the_source_head(tiny, tmp_path):
    out = tmp_path / "run"
    summary = vprompt.train(
        **dict(tiny, epochs=2), method="vp-pad", method_options={"mapping": "ilm", "width": 4}, output=out
    )
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method_options"]["num_classes"] == 4  # filled in from the dataset
    assert summary["trainable_parameters"] == summary["trainable_parameters_without_head"]
    mapping = weights(out)["method.mapping"]
    assert len(set(mapping.tolist())) == 4 and (mapping >= 0).all()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="nope"), "unknown method 'nope'; choose one of: linear"),
        (
            dict(method="ap", method_options={"sitee": "block.1"}),
            "has no option 'sitee'; its options are: site",
        ),
        (dict(method="linear", backbone="vit_tiny_patch16_2244"), "vit_tiny_patch16_224"),
        (dict(method="linear", data="imagenet99"), "unknown dataset spec"),
        (
            dict(method="linear", optimizer="lamb"),
            "option 'optimizer': expected one of sgd, adam, adamw, got 'lamb'",
        ),
        (dict(method="linear", final=True, selection="best-val"), "needs a validation split"),
        (
            dict(method="linear", train_split="trainval"),
            "training split 'trainval' and the validation split 'val' share images",
        ),
        (dict(method="linear", epochs=0), "epochs must be at least 1"),
        (dict(method="vpt-deep", backbone="resnet18"), "family 'resnet'"),
    ],
)
def test_clear_errors(tiny, tmp_path, options, message):
    with pytest.raises((ValueError, KeyError), match=message):
        vprompt.train(**{**tiny, **options}, output=tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_refuses_to_overwrite_a_run(tiny, tmp_path):
    vprompt.train(**dict(tiny, epochs=1), method="linear", output=tmp_path / "r")
    with pytest.raises(FileExistsError, match="--resume"):
        vprompt.train(**dict(tiny, epochs=1), method="linear", output=tmp_path / "r")
    # resuming a finished run returns its summary without training again
    assert (
        vprompt.train(**dict(tiny, epochs=1), method="linear", output=tmp_path / "r", resume=True)["epochs"]
        == 1
    )


def test_cli_yaml_with_command_line_overrides(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY, "method": "ap", "site": "block.1", "epochs": 5, "lr": 0.5}))
    out = tmp_path / "run"
    code = main(
        ["train", "--config", str(config), "--epochs", "1", "--site", "block.2", "--output", str(out)]
    )
    assert code == 0 and "val_accuracy" in capsys.readouterr().out
    saved = RunDir(out).read_config()
    assert saved["epochs"] == 1 and saved["lr"] == 0.5  # the command line wins; the file fills the rest
    assert saved["method_options"]["site"] == "block.2"
    assert main(["eval", str(out), "--split", "val", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["images"] == 16


def test_cli_unknown_method_option_lists_valid_ones(tmp_path, capsys):
    args = ["train", "--backbone", "resnet18", "--method", "ap", "--sitee", "x", "--data", "synthetic:2x8"]
    assert main([*args, "--output", str(tmp_path / "r")]) == 2
    assert (
        "unknown option --sitee x for method 'ap'; its options are: --site, --shape"
        in capsys.readouterr().err
    )


def test_each_run_reports_its_own_peak_memory(tiny, tmp_path):
    """On CPU the peak is the process's resident-set high-water mark, restarted when a run starts."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("Linux only")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    block = b"x" * (400 * 2**20)  # an earlier peak of this process, well above what the run needs
    del block
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 > before + 300
    summary = vprompt.train(**dict(tiny, epochs=1), method="linear", output=tmp_path / "r")
    assert summary["peak_memory_mib"] < before + 100


def test_resuming_a_finished_run_with_other_options_is_refused(tiny, tmp_path):
    vprompt.train(
        **dict(tiny, epochs=1), method="ap", method_options={"site": "block.1"}, output=tmp_path / "r"
    )
    again = dict(tiny, epochs=1, method="ap", output=tmp_path / "r", resume=True)
    assert vprompt.train(**again, method_options={"site": "block.1"})["epochs"] == 1  # same: reused
    with pytest.raises(ValueError, match=r"other options \(method_options.site: 'block.1' → 'block.2'\)"):
        vprompt.train(**again, method_options={"site": "block.2"})


def test_the_gradient_scaler_unscales_before_clipping(tiny, tmp_path, monkeypatch):
    """fp16 training: scale the loss, unscale the gradients, clip them, step, update — in that order
    (clipping scaled gradients would clip at the wrong norm). A disabled scaler runs the same path on a
    CPU and changes nothing, so the weights equal a run without one."""
    events = []

    class Recording(torch.amp.GradScaler):
        def scale(self, outputs):
            events.append("scale")
            return super().scale(outputs)

        def unscale_(self, optimizer):
            events.append("unscale")
            return super().unscale_(optimizer)

        def step(self, optimizer, *args, **kwargs):
            events.append("step")
            return super().step(optimizer, *args, **kwargs)

        def update(self, new_scale=None):
            events.append("update")
            return super().update(new_scale)

    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        events.append("clip")
        return clip(*args, **kwargs)

    run = dict(tiny, method="ap", method_options={"site": "block.5"}, epochs=1, grad_clip=0.5)
    vprompt.train(**run, output=tmp_path / "plain")
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    scaled = trainer_module.Precision(None, "cpu", Recording("cpu", enabled=False))
    monkeypatch.setattr(trainer_module.Precision, "choose", classmethod(lambda cls, name, device: scaled))
    vprompt.train(**run, output=tmp_path / "scaled")
    steps = 4  # 64 training images, batch 16
    assert events == ["scale", "unscale", "clip", "step", "update"] * steps
    same_weights(weights(tmp_path / "scaled"), weights(tmp_path / "plain"))
