"""Nothing vprompt reads can run code, and a damaged file is refused with one clear error, never used."""

from __future__ import annotations

import io
import os

import pytest
import torch

import vprompt
from tiny_runs import TINY
from vprompt.engine.rundir import ADAPTER, CHECKPOINT, CONFIG, SUMMARY, CheckpointError, RunDir

LINEAR = dict(TINY, method="linear", epochs=2)


class _Payload:
    """Unpickling this runs code: it writes a marker file (what a hostile checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path, marker) -> None:
    """A real torch checkpoint whose pickle calls ``open(marker, 'w')`` when loaded without weights_only."""
    buffer = io.BytesIO()
    torch.save({"model": _Payload(marker)}, buffer)
    path.write_bytes(buffer.getvalue())


@pytest.fixture
def interrupted(tmp_path):
    """A run folder with a real checkpoint of its last epoch, killed before it wrote its summary."""
    run = RunDir(tmp_path / "run")
    vprompt.train(**LINEAR, output=run.path)
    (run / SUMMARY).unlink()
    return run


def test_a_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path, interrupted):
    marker = tmp_path / "pwned"
    plant_pickle(interrupted / CHECKPOINT, marker)
    with pytest.raises(CheckpointError, match="refused to load, it holds Python objects that could run code"):
        vprompt.train(**LINEAR, output=interrupted.path, resume=True)
    assert not marker.exists()


def test_a_checkpoint_wrapper_holding_code_is_refused_too(tmp_path, interrupted):
    """The code sits inside a correctly checksummed payload: the inner load is weights-only as well."""
    import hashlib

    marker = tmp_path / "pwned"
    inner = io.BytesIO()
    torch.save({"progress": _Payload(marker)}, inner)
    data = inner.getvalue()
    wrapper = {
        "format": "vprompt-checkpoint",
        "version": 2,
        "sha256": hashlib.sha256(data).hexdigest(),
        "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8),
    }
    torch.save(wrapper, interrupted / CHECKPOINT)
    with pytest.raises(CheckpointError, match="could run code"):
        interrupted.load_checkpoint()
    assert not marker.exists()


def test_weights_files_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    plant_pickle(tmp_path / "evil.pth", marker)
    with pytest.raises(Exception, match=r"(?i)weights.only|unsupported global|could run code"):
        vprompt.backbone("vit_tiny_patch16_224", img_size=32, weights=tmp_path / "evil.pth")
    assert not marker.exists()


def test_an_adapter_file_that_is_a_pickle_is_refused(tmp_path):
    run = tmp_path / "run"
    vprompt.train(**LINEAR, output=run)
    marker = tmp_path / "pwned"
    plant_pickle(run / ADAPTER / "vprompt_model.safetensors", marker)
    with pytest.raises(ValueError, match=r"vprompt_model\.safetensors: damaged or not a safetensors file"):
        vprompt.load_run(run)
    assert not marker.exists()


def test_a_run_config_with_a_python_tag_is_refused(tmp_path):
    run = tmp_path / "run"
    vprompt.train(**LINEAR, output=run)
    marker = tmp_path / "pwned"
    (run / CONFIG).write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match=r"config\.yaml: not a valid run config"):
        RunDir(run).read_config()
    assert not marker.exists()
    from vprompt.cli import main

    assert main(["eval", str(run)]) == 2  # a clear one-line error, no traceback
    assert not marker.exists()


# ------------------------------------------------------------------------------ damaged checkpoints


def _flip_bytes(path, count=100):
    data = bytearray(path.read_bytes())
    step = max(1, len(data) // (count + 1))
    for i in range(1, count + 1):
        data[i * step] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: _flip_bytes(p), id="flipped-bytes"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(os.urandom(4096)), id="random"),
        pytest.param(lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 100), id="zip-header-only"),
    ],
)
def test_a_damaged_checkpoint_is_never_resumed_from(interrupted, damage):
    damage(interrupted / CHECKPOINT)
    with pytest.raises(
        CheckpointError, match=r"checkpoint\.pt: .*delete .*checkpoint\.pt to start the run over"
    ):
        vprompt.train(**LINEAR, output=interrupted.path, resume=True)


def test_random_bytes_are_not_a_vprompt_checkpoint_and_not_called_code(tmp_path):
    """Random bytes fail torch's weights-only unpickler too: they are called corrupt, not code; a whole
    pickle that imports a callable (bare, or in torch's zip) is still refused as code."""
    import pickle
    import random

    run = RunDir(tmp_path)
    for seed in range(20):
        (run / CHECKPOINT).write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError) as caught:
            run.load_checkpoint()
        assert "not a vprompt checkpoint (corrupt or another format)" in str(caught.value), seed
    (run / CHECKPOINT).write_bytes(pickle.dumps({"model": _Payload(tmp_path / "pwned")}, protocol=2))
    with pytest.raises(CheckpointError, match="could run code"):
        run.load_checkpoint()
    assert not (tmp_path / "pwned").exists()


def test_a_payload_bit_flip_is_caught_by_the_checksum(interrupted):
    state = torch.load(interrupted / CHECKPOINT, weights_only=True)
    state["payload"][len(state["payload"]) // 2] ^= 1  # one bit, inside a valid container
    torch.save(state, interrupted / CHECKPOINT)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        interrupted.load_checkpoint()


def test_a_checkpoint_claiming_more_epochs_than_the_run_is_refused(interrupted):
    state = interrupted.load_checkpoint()
    state["progress"]["epoch"] = 99
    interrupted.save_checkpoint(state)  # a valid file, with a state that cannot belong to this run
    with pytest.raises(ValueError, match="claims 99 finished epochs .* for a run of 2 epochs"):
        vprompt.train(**LINEAR, output=interrupted.path, resume=True)


def test_rng_states_are_plain_tensors_and_round_trip(interrupted):
    """The RNG states (torch, numpy, python) load with weights_only=True and restore exactly."""
    import random

    import numpy as np

    from vprompt.engine.trainer import rng_state, set_rng_state

    state = interrupted.load_checkpoint()  # weights_only=True inside: numpy arrays would be refused
    assert isinstance(state["rng"][0]["numpy"]["key"], torch.Tensor)
    saved = rng_state()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(buffer, weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]
