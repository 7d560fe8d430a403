"""--log csv / tensorboard / wandb: per-step loss and lr, per-epoch metrics, config and summary; the values
read back from each tracker's files equal metrics.jsonl and summary.json."""

import csv
import json

import pytest

import vprompt
from tiny_runs import TINY, TINY_CLI
from wandb_records import history_and_summary

STEPS_PER_EPOCH = 4  # synthetic:4x32 has 64 training images, batch 16


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_steps_match_epochs(steps: list[tuple[int, float, float]], rows: list[dict]):
    """Steps 1..N; each epoch's batch losses average to its train_loss (equal batches); the lr an epoch
    row reports is the lr of the next epoch's first step."""
    assert [s for s, _, _ in steps] == list(range(1, len(rows) * STEPS_PER_EPOCH + 1))
    for e, row in enumerate(rows):
        losses = [loss for _, loss, _ in steps[e * STEPS_PER_EPOCH : (e + 1) * STEPS_PER_EPOCH]]
        assert sum(losses) / len(losses) == pytest.approx(row["train_loss"], rel=1e-5)
        if e + 1 < len(rows):
            assert steps[(e + 1) * STEPS_PER_EPOCH][2] == pytest.approx(row["lr"], rel=1e-6)


def test_csv_is_the_default_with_steps_csv(tmp_path):
    run = tmp_path / "run"
    vprompt.train(TINY, method="linear", output=run, warmup_epochs=1)
    with open(run / "steps.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "loss", "lr"]
    steps = [(int(s), float(loss), float(lr)) for s, loss, lr in rows[1:]]
    check_steps_match_epochs(steps, metrics(run))
    assert steps[0][2] < steps[STEPS_PER_EPOCH][2]  # linear warm-up over the first epoch


def test_tensorboard_events_equal_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    summary = vprompt.train(TINY, method="linear", output=run, log="tensorboard")
    assert not (run / "steps.csv").exists()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    loss, lr = scalars["train/loss"], scalars["train/lr"]
    steps = [(e.step, e.value, lr_e.value) for e, lr_e in zip(loss, lr, strict=True)]
    rows = metrics(run)
    check_steps_match_epochs(steps, rows)
    for key in ("train_loss", "train_accuracy", "lr"):
        got = [(e.step, e.value) for e in scalars[f"epoch/{key}"]]
        assert got == [
            ((i + 1) * STEPS_PER_EPOCH, pytest.approx(r[key], rel=1e-6)) for i, r in enumerate(rows)
        ]
    assert scalars["summary/val_accuracy"][0].value == pytest.approx(summary["val_accuracy"], rel=1e-6)
    texts = {
        tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]
    }
    config_text = next(v for k, v in texts.items() if k.startswith("config"))
    assert '"method": "linear"' in config_text and '"peak_lr"' in config_text
    assert '"val_accuracy"' in next(v for k, v in texts.items() if k.startswith("summary"))


def test_tensorboard_hparams_hold_the_options_and_the_final_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run = tmp_path / "run"
    options = {"site": "block.11", "shape": "channel"}
    summary = vprompt.train(
        dict(TINY, epochs=1), method="ap", method_options=options, output=run, log="tensorboard"
    )
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    assert set(content) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert values["lr"] == TINY["lr"] and values["batch_size"] == TINY["batch_size"] and values["epochs"] == 1
    assert (
        values["method"] == "ap" and values["backbone"] == TINY["backbone"] and values["data"] == TINY["data"]
    )
    assert values["method_options.site"] == "block.11" and values["method_options.shape"] == "channel"
    assert (
        values["optimizer"] == "sgd" and values["random_init"] == "true" and "weights" not in values
    )  # unset
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {h.name for h in experiment.hparam_infos} == set(values)
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"summary/val_accuracy", "summary/val_loss", "summary/train_seconds"} <= metric_tags
    assert "summary/epochs" not in metric_tags and "summary/seed" not in metric_tags  # options, not metrics
    scalars = set(events.Tags()["scalars"])
    assert metric_tags <= scalars  # every metric has its value in the run
    last = events.Scalars("summary/val_accuracy")[-1].value
    assert last == pytest.approx(summary["val_accuracy"], rel=1e-6)


def test_wandb_offline_without_network_or_key(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    summary = vprompt.train(TINY, method="linear", output=run, log="wandb")
    (offline,) = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    history, saved = history_and_summary(offline)
    steps = [(h["_step"], h["train/loss"], h["train/lr"]) for h in history]
    rows = metrics(run)
    check_steps_match_epochs(steps, rows)
    epochs = [h for h in history if "epoch/train_loss" in h]
    assert [h["_step"] for h in epochs] == [(i + 1) * STEPS_PER_EPOCH for i in range(len(rows))]
    for h, row in zip(epochs, rows, strict=True):
        assert h["epoch/train_loss"] == pytest.approx(row["train_loss"], rel=1e-6)
        assert h["epoch/val_accuracy"] == pytest.approx(row["val_accuracy"], rel=1e-6)
    assert saved["val_accuracy"] == pytest.approx(summary["val_accuracy"])
    assert saved["method"] == "linear"


def test_tracker_needing_a_folder_is_refused_without_output():
    with pytest.raises(ValueError, match="--log tensorboard writes into the run folder: give --output"):
        vprompt.train(TINY, method="linear", log="tensorboard")
    with pytest.raises(ValueError, match="option 'log': expected one of csv, tensorboard, wandb"):
        vprompt.train(TINY, method="linear", log="mlflow")


def test_wandb_that_cannot_reach_its_server_falls_back_to_offline_and_says_so(tmp_path, monkeypatch, capsys):
    """An API key but no reachable server (wandb.init raises CommError): the run trains, logged offline."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    real_init, modes = wandb.init, []

    def init(**kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") != "offline":
            raise wandb.errors.CommError("failed to reach api.wandb.ai")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    run = tmp_path / "run"
    vprompt.train(TINY, method="linear", epochs=1, output=run, log="wandb")
    assert modes == [None, "offline"] and (run / "summary.json").is_file()
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vprompt: warning")]
    assert len(warning) == 1 and "failed to reach api.wandb.ai" in warning[0] and "wandb sync" in warning[0]


def test_a_tensorboard_folder_that_is_a_file_is_one_line_before_training(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from vprompt.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").write_text("mine")
    args = [
        "train",
        *TINY_CLI,
    ]
    assert main([*args, "--method", "linear", "--log", "tensorboard", "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "tensorboard as a --log tensorboard folder: it is a file, not a folder" in err
    assert (run / "tensorboard").read_text() == "mine" and not (run / "checkpoint.pt").exists()
