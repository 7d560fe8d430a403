"""Runs on data given as Python objects: trained, recorded (a description and a fingerprint, never the
object), and resumed or evaluated only with the same data passed again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from timm.scheduler import CosineLRScheduler
from torch.utils.data import TensorDataset
from torchvision.datasets import ImageFolder

import vprompt
from tiny_runs import TINY, same_weights, weights
from vprompt.cli import main
from vprompt.data import DataError
from vprompt.engine.run import data_objects
from vprompt.engine.rundir import RunDir

#: TINY without its data spec: the tests give Python objects instead
OPTIONS = {k: v for k, v in TINY.items() if k != "data"} | dict(method="linear", epochs=1)


def write_photos(folder, size=12):
    """Three class folders, eight images each, coloured by class (learnable)."""
    for c, name in enumerate(["cat", "dog", "owl"]):
        for i in range(8):
            pixels = np.random.default_rng(10 * c + i).integers(0, 60, (size, size, 3)) + 90 * c
            (folder / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("data") / "photos")


@pytest.fixture(scope="module")
def finished(photos, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    return run, vprompt.train(**OPTIONS, data=ImageFolder(photos), output=run)


def one_line(capsys, command):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vprompt {command}: error: "), err
    return err


def test_an_image_folder_dataset_trains_and_its_run_records_a_description_and_fingerprint(finished):
    run, summary = finished
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"] == summary["data"] and summary["data"].startswith("python:ImageFolder#")
    data = config["resolved"]["data"]
    assert data["description"] == "Python objects: train ImageFolder (24 items)"
    assert data["class_names"] == ["cat", "dog", "owl"] and data["sizes"] == {"train": 22, "val": 2}
    prints = config["resolved"]["data_fingerprint"]
    assert {k: v["items"] for k, v in prints.items()} == {"train": 22, "val": 2}
    assert summary["val_accuracy"] is not None and summary["cache"]["site"] is not None  # PIL: cacheable


def test_the_run_folder_alone_cannot_evaluate_it_and_the_same_data_again_can(finished, photos, capsys):
    run, summary = finished
    assert main(["eval", str(run)]) == 2
    err = one_line(capsys, "eval")
    assert f"{summary['data']}: this data was given to vprompt as Python objects" in err
    assert "pass the dataset again through the Python API" in err
    again = vprompt.evaluate_run(run, split="val", data=ImageFolder(photos), device="cpu")
    assert again["accuracy"] == pytest.approx(summary["val_accuracy"]) and again["data"] == summary["data"]
    new_test = vprompt.evaluate_run(run, data={"test": ImageFolder(photos)}, device="cpu")
    assert new_test["images"] == 24 and new_test["split"] == "test"


def test_an_interrupted_run_resumes_only_with_the_same_data(photos, tmp_path, monkeypatch, capsys):
    options = dict(OPTIONS, epochs=2)
    vprompt.train(**options, data=ImageFolder(photos), output=tmp_path / "whole")
    original = CosineLRScheduler.step_update

    def crash(self, num_updates, metric=None):
        if num_updates == 3:  # one step into epoch 2 (22 training images: 2 steps per epoch)
            raise KeyboardInterrupt
        return original(self, num_updates, metric)

    monkeypatch.setattr(CosineLRScheduler, "step_update", crash)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        vprompt.train(**options, data=ImageFolder(photos), output=cut)
    monkeypatch.setattr(CosineLRScheduler, "step_update", original)
    capsys.readouterr()
    assert main(["train", "--resume", str(cut)]) == 2  # the run folder alone
    assert "pass the dataset again through the Python API" in one_line(capsys, "train")
    changed = write_photos(tmp_path / "changed")
    Image.new("RGB", (12, 12), (255, 0, 0)).save(changed / "cat" / "0.png")  # one image differs
    with pytest.raises(ValueError, match=r"cannot resume: the config differs .*data: 'python:ImageFolder#"):
        vprompt.train(**options, data=ImageFolder(changed), output=cut, resume=True)
    vprompt.train(**options, data=ImageFolder(photos), output=cut, resume=True)  # a new, equal object
    same_weights(weights(cut), weights(tmp_path / "whole"))
    assert RunDir(cut).read_summary()["epochs"] == 2


def test_tensor_items_are_taken_as_they_are_and_their_shape_is_checked(tmp_path):
    images, labels = torch.randn(24, 3, 32, 32), torch.arange(24) % 3
    summary = vprompt.train(
        **OPTIONS, data=(TensorDataset(images, labels), TensorDataset(images[:6], labels[:6]))
    )
    assert summary["sizes"] == {"train": 24, "val": 6}
    assert summary["cache"]["site"] is None  # its own transforms may be random
    assert "tensors from its own transforms" in summary["cache"]["why"]
    with pytest.raises(
        DataError, match=r"a tensor of shape \(3, 16, 16\), but the model takes \(3, 32, 32\)"
    ):
        vprompt.train(**OPTIONS, data=TensorDataset(torch.randn(8, 3, 16, 16), torch.arange(8) % 2))


def test_a_train_config_or_a_dict_can_hold_the_dataset(photos, finished):
    summary = vprompt.train(vprompt.TrainConfig(**OPTIONS, data=ImageFolder(photos)))
    assert summary["data"] == finished[1]["data"]
    config, overrides, source = data_objects(dict(OPTIONS, data=ImageFolder(photos)), {})
    assert config["data"] == source.info.spec == summary["data"] and overrides == {}
