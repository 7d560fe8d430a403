"""Mixed precision: the autocast a run uses on its device, and whether this CPU computes in bf16.

``auto`` is bf16 autocast on a GPU that has it (fp16 with a gradient scaler on one that does not) and
fp32 on a CPU. On a CPU, ``bf16`` is an explicit opt-in, accepted only where the CPU has native bf16
instructions (x86: AVX512-BF16 or AMX-BF16; Arm: the BF16 extension): without them PyTorch falls back
to emulating bf16, so the run is refused with one line saying what to use instead. ``fp16`` on a CPU
runs as PyTorch provides it (emulated on most CPUs, with the gradient scaler): it lets the fp16 code
path be checked without a GPU. ``VPROMPT_EMULATED_BF16=1`` lets bf16 run
on any CPU, emulated, for the same purpose (``benchmarks/gpu_check.py``'s CPU dry run sets it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import choices_of

#: /proc/cpuinfo flags of x86 CPUs with native bf16 arithmetic
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: the /proc/cpuinfo feature of Arm CPUs with the BF16 extension
ARM_BF16_FEATURE = "bf16"
#: the macOS sysctl that is 1 on Apple silicon with the BF16 extension
MAC_BF16_SYSCTL = "hw.optional.arm.FEAT_BF16"
#: an environment variable: ``1`` runs bf16 on a CPU without native bf16 (emulated: to check code paths)
EMULATED_BF16 = "VPROMPT_EMULATED_BF16"


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU has native bf16 arithmetic, and what was looked for to tell."""

    supported: bool
    looked_for: str


def cpuinfo_features(text: str) -> set[str]:
    """The feature words of ``/proc/cpuinfo`` text: its ``flags`` lines (x86) and ``Features`` lines (Arm)."""
    words: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            words |= set(value.split())
    return words


def detect_cpu_bf16(
    system: str, machine: str, cpuinfo: str | None = None, sysctl: str | None = None
) -> CpuBf16:
    """Native bf16 on a CPU of ``system`` (``platform.system()``) and ``machine`` (``platform.machine()``),
    from the text of ``/proc/cpuinfo`` (Linux) or the output of ``sysctl -n`` (macOS); ``None``: unreadable."""
    machine = machine.lower()
    if system == "Linux" and machine in ("x86_64", "amd64", "i686", "i386"):
        found = cpuinfo_features(cpuinfo or "") & set(X86_BF16_FLAGS)
        return CpuBf16(bool(found), "the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo")
    if system == "Linux" and machine in ("aarch64", "arm64"):
        found = ARM_BF16_FEATURE in cpuinfo_features(cpuinfo or "")
        return CpuBf16(found, "the bf16 feature in /proc/cpuinfo")
    if system == "Darwin" and machine == "arm64":
        return CpuBf16((sysctl or "").strip() == "1", f"sysctl {MAC_BF16_SYSCTL} = 1")
    return CpuBf16(False, f"no native bf16 check is known for {system or 'this system'} on {machine or '?'}")


@functools.cache
def cpu_bf16() -> CpuBf16:
    """Native bf16 on this machine's CPU (read once)."""
    system, machine = platform.system(), platform.machine()
    cpuinfo = sysctl = None
    if system == "Linux":
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    elif system == "Darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["sysctl", "-n", MAC_BF16_SYSCTL], capture_output=True, text=True, timeout=10
            )
            sysctl = done.stdout if done.returncode == 0 else None
    return detect_cpu_bf16(system, machine, cpuinfo, sysctl)


def require_cpu_bf16() -> None:
    """A one-line ``ValueError`` where this CPU lacks native bf16 (unless ``VPROMPT_EMULATED_BF16=1``)."""
    if os.environ.get(EMULATED_BF16) == "1":
        return
    found = cpu_bf16()
    if not found.supported:
        raise ValueError(
            f"--precision bf16 on a CPU needs native bf16 instructions, and this CPU lacks them (looked for "
            f"{found.looked_for}); use --precision fp32, or a GPU (--device cuda)"
        )


@dataclass
class Precision:
    """Autocast settings: bf16 (or fp16 with a gradient scaler) on a GPU, fp32 elsewhere unless asked."""

    dtype: torch.dtype | None = None
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def choose(cls, name: str, device: torch.device) -> Precision:
        """The precision ``name`` (auto, fp32, bf16, fp16) means on ``device``; bf16 on a CPU without native
        bf16 is a clear error."""
        if name not in choices_of("precision"):
            raise ValueError(
                f"unknown precision {name!r}; choose one of: {', '.join(choices_of('precision'))}"
            )
        if name == "fp32" or (name == "auto" and device.type != "cuda"):
            return cls(None, device.type)
        if name == "auto":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if name == "bf16" and device.type == "cpu":
            require_cpu_bf16()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[name]
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(dtype, device.type, scaler)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)
