"""Precision on a CPU: ``auto`` is fp32; ``bf16`` is an opt-in that really computes in bf16 where the CPU
has native bf16 (training, the frozen-prefix cache, evaluation, the record), and one clear line where it
does not; ``fp16`` runs as PyTorch emulates it.

Whether this machine's CPU has bf16 never decides a test: the detection is fed text, or replaced."""

from __future__ import annotations

import pytest
import torch

import vprompt
from tiny_runs import TINY, same_weights, weights
from vprompt.cli import main
from vprompt.engine import precision as precision_module
from vprompt.engine import trainer as trainer_module
from vprompt.engine.precision import CpuBf16, Precision, cpuinfo_features, detect_cpu_bf16
from vprompt.engine.rundir import RunDir
from vprompt.engine.trainer import Precision as TrainerPrecision

CPU = torch.device("cpu")
X86_LOOKED_FOR = "the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo"

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw {extra} xsave
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw {extra} xsave
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics {extra} dcpop
CPU implementer\t: 0x41
"""


@pytest.fixture
def cpu_has_bf16(monkeypatch):
    """Native bf16 as far as vprompt can tell (PyTorch computes bf16 on any CPU, so runs work anywhere)."""
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: CpuBf16(True, X86_LOOKED_FOR))


@pytest.fixture
def cpu_lacks_bf16(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: CpuBf16(False, X86_LOOKED_FOR))
    monkeypatch.delenv("VPROMPT_EMULATED_BF16", raising=False)


def test_the_detection_reads_cpuinfo_flags_and_features():
    x86 = X86_CPUINFO.format(extra="avx512_bf16 avx512_vnni")
    assert {"avx2", "avx512_bf16", "avx512_vnni"} <= cpuinfo_features(x86)
    assert "GenuineIntel" not in cpuinfo_features(x86)  # only the flags lines
    assert detect_cpu_bf16("Linux", "x86_64", x86) == CpuBf16(True, X86_LOOKED_FOR)
    assert detect_cpu_bf16("Linux", "x86_64", X86_CPUINFO.format(extra="amx_bf16 amx_tile")).supported
    assert detect_cpu_bf16("Linux", "x86_64", X86_CPUINFO.format(extra="avx512_vnni")) == CpuBf16(
        False, X86_LOOKED_FOR
    )
    assert not detect_cpu_bf16("Linux", "x86_64", None).supported  # /proc/cpuinfo unreadable
    # an Arm Linux CPU: the bf16 word of its Features lines (x86's flags do not count there)
    arm = detect_cpu_bf16("Linux", "aarch64", ARM_CPUINFO.format(extra="asimddp bf16 i8mm"))
    assert arm == CpuBf16(True, "the bf16 feature in /proc/cpuinfo")
    assert not detect_cpu_bf16("Linux", "aarch64", ARM_CPUINFO.format(extra="asimddp")).supported
    assert not detect_cpu_bf16("Linux", "aarch64", X86_CPUINFO.format(extra="avx512_bf16")).supported
    # macOS on Apple silicon: the sysctl's value
    assert detect_cpu_bf16("Darwin", "arm64", sysctl="1\n") == CpuBf16(
        True, "sysctl hw.optional.arm.FEAT_BF16 = 1"
    )
    assert not detect_cpu_bf16("Darwin", "arm64", sysctl="0\n").supported
    assert not detect_cpu_bf16("Darwin", "arm64", sysctl=None).supported  # no such sysctl (M1, M2)
    # anything else: no check is known, so no bf16
    other = detect_cpu_bf16("Windows", "AMD64")
    assert other == CpuBf16(False, "no native bf16 check is known for Windows on amd64")
    assert not detect_cpu_bf16("Darwin", "x86_64", sysctl="1").supported


def test_this_machine_is_read_without_error():
    precision_module.cpu_bf16.cache_clear()
    found = precision_module.cpu_bf16()  # whatever this CPU has: an answer, and what was looked for
    assert isinstance(found.supported, bool) and found.looked_for
    assert precision_module.cpu_bf16() is found  # read once


def test_the_precision_class_lives_in_its_own_module_and_the_old_import_works():
    assert TrainerPrecision is Precision


def test_auto_is_fp32_on_a_cpu_and_asks_nothing(monkeypatch):
    def unexpected():
        raise AssertionError("auto and fp32 must not depend on the CPU's bf16")

    monkeypatch.setattr(precision_module, "cpu_bf16", unexpected)
    for name in ("auto", "fp32"):
        chosen = Precision.choose(name, CPU)
        assert chosen.name == "fp32" and chosen.dtype is None and chosen.scaler is None
    with pytest.raises(ValueError, match="unknown precision 'bf17'; choose one of: auto, fp32, bf16, fp16"):
        Precision.choose("bf17", CPU)


def test_fp16_on_a_cpu_runs_with_the_gradient_scaler(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: pytest.fail("fp16 does not need bf16"))
    chosen = Precision.choose("fp16", CPU)
    assert chosen.name == "fp16" and chosen.device_type == "cpu" and chosen.scaler is not None
    with chosen.autocast():
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float16


def test_bf16_on_a_cpu_without_it_is_one_clear_error(cpu_lacks_bf16):
    with pytest.raises(ValueError) as e:
        Precision.choose("bf16", CPU)
    message = str(e.value)
    assert "\n" not in message
    assert "this CPU lacks them" in message and X86_LOOKED_FOR in message
    assert "use --precision fp32, or a GPU" in message


def test_emulated_bf16_is_an_explicit_environment_switch(cpu_lacks_bf16, monkeypatch):
    monkeypatch.setenv("VPROMPT_EMULATED_BF16", "0")
    with pytest.raises(ValueError, match="this CPU lacks them"):
        Precision.choose("bf16", CPU)
    monkeypatch.setenv("VPROMPT_EMULATED_BF16", "1")  # what gpu_check.py's CPU dry run sets
    assert Precision.choose("bf16", CPU).dtype == torch.bfloat16


def test_the_cli_says_it_in_one_line(cpu_lacks_bf16, capsys, tmp_path):
    args = ["--backbone", TINY["backbone"], "--img-size", "32", "--data", TINY["data"], "--random-init"]
    args += ["--batch-size", "16", "--epochs", "1", "--no-progress", "--device", "cpu"]
    code = main(
        ["train", *args, "--method", "linear", "--precision", "bf16", "--output", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("vprompt train: error: --precision bf16 on a CPU needs native bf16")
    assert X86_LOOKED_FOR in err and "--precision fp32" in err


def test_eval_of_a_bf16_run_on_a_cpu_without_bf16_says_it_and_runs_in_fp32(
    cpu_has_bf16, monkeypatch, capsys, tmp_path
):
    run = tmp_path / "run"
    vprompt.train(**dict(TINY, method="linear", epochs=1), precision="bf16", device="cpu", output=run)
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: CpuBf16(False, X86_LOOKED_FOR))
    monkeypatch.delenv("VPROMPT_EMULATED_BF16", raising=False)
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vprompt eval: error: --precision bf16 on a CPU"), err
    assert main(["eval", str(run), "--device", "cpu", "--precision", "fp32"]) == 0
    assert '"precision": "fp32"' in capsys.readouterr().out


def test_a_bf16_run_on_a_cpu_computes_in_bf16_and_records_it(cpu_has_bf16, monkeypatch, tmp_path):
    seen: dict[str, set[torch.dtype]] = {}  # the output dtypes of every nn.Linear in training and validation
    fit = trainer_module.Trainer.fit

    def recording_fit(self):
        def hook(module, inputs, output):
            if isinstance(module, torch.nn.Linear):
                seen.setdefault(self.config.precision, set()).add(output.dtype)

        handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            return fit(self)
        finally:
            handle.remove()

    monkeypatch.setattr(trainer_module.Trainer, "fit", recording_fit)
    run = dict(TINY, method="ap", method_options={"site": "block.8"}, epochs=2, cache="off", device="cpu")
    summaries = {
        name: vprompt.train(**run, precision=name, output=tmp_path / name) for name in ("bf16", "auto")
    }
    assert seen == {"bf16": {torch.bfloat16}, "auto": {torch.float32}}  # every matmul in the run's dtype
    bf16, fp32 = summaries["bf16"], summaries["auto"]
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    config = RunDir(tmp_path / "bf16").read_config()
    assert config["precision"] == "bf16" and config["resolved"]["precision"] == "bf16"
    # the same run, other roundings: close, not equal
    rows = {name: RunDir(tmp_path / name).read_metrics() for name in seen}
    losses = [[r["train_loss"] for r in rows[name]] for name in seen]
    assert losses[0] != losses[1] and losses[0] == pytest.approx(losses[1], abs=0.05)
    # the trained weights stay fp32 (autocast computes in bf16, the parameters are fp32)
    assert {t.dtype for t in weights(tmp_path / "bf16").values()} == {torch.float32}
    # vprompt eval: the run's precision by default; the same images and batches give the same accuracy
    again = vprompt.evaluate_run(tmp_path / "bf16", split="val", device="cpu", batch_size=32)
    assert again["precision"] == "bf16" and again["accuracy"] == pytest.approx(bf16["val_accuracy"])
    as_fp32 = vprompt.evaluate_run(tmp_path / "bf16", split="val", device="cpu", precision="fp32")
    assert as_fp32["precision"] == "fp32" and as_fp32["images"] == again["images"]


def test_predict_with_a_bf16_run_works_in_fp32(cpu_has_bf16, tmp_path):
    from PIL import Image

    from vprompt.engine.inference import predict

    run = tmp_path / "run"
    vprompt.train(**dict(TINY, method="linear", epochs=1), precision="bf16", device="cpu", output=run)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    ((_, ranked),) = predict(run, [image], top=2)
    names = RunDir(run).read_config()["resolved"]["data"]["class_names"]
    assert [name in names for name, _ in ranked] == [True, True]
    assert ranked[0][1] >= ranked[1][1] > 0 and ranked[0][1] + ranked[1][1] <= 1 + 1e-6


def test_cached_and_uncached_bf16_runs_agree(cpu_has_bf16, tmp_path):
    """The cache holds the activations the uncached bf16 run computes (built under the same autocast).
    The tolerance leaves room for bf16 kernels that round batches of other shapes differently, and is well
    below what a cache built in fp32 changes (1.4e-3 in the head's weights, measured on this setting)."""
    run = dict(TINY, method="ap", method_options={"site": "block.8"}, precision="bf16", device="cpu")
    cached = vprompt.train(**run, cache="memory", output=tmp_path / "cached")
    plain = vprompt.train(**run, cache="off", output=tmp_path / "plain")
    assert cached["cache"]["site"] == "block.8" and plain["cache"]["site"] is None
    assert cached["precision"] == plain["precision"] == "bf16"
    same_weights(weights(tmp_path / "cached"), weights(tmp_path / "plain"), atol=2e-4)
    assert cached["val_accuracy"] == pytest.approx(plain["val_accuracy"])
