"""A run directory: every file a training run writes, each written atomically.

```text
<run>/config.yaml         the resolved config, every protocol switch included
<run>/metrics.jsonl       one line per epoch (loss, accuracy, lr, time; validation where measured)
<run>/summary.json        the result: accuracies, parameters, time, memory, throughput, versions, device
<run>/adapter/            the kept weights, trainable state only (adapter.safetensors + adapter_config.json)
<run>/checkpoint.pt       resumable state after the last finished epoch
```
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ADAPTER = "adapter"
CHECKPOINT = "checkpoint.pt"


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


class RunDir:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        return (self.path / SUMMARY).is_file()

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    # ---------------------------------------------------------------------------------- config
    def write_config(self, config: dict[str, Any]) -> None:
        write_text(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        path = self.path / CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} is not a vprompt run directory (no {CONFIG})")
        return yaml.safe_load(path.read_text())

    # --------------------------------------------------------------------------------- metrics
    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite the whole metrics file (so a resumed run never keeps rows of epochs it redid)."""
        write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # --------------------------------------------------------------------------------- summary
    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / SUMMARY, summary)

    def read_summary(self) -> dict[str, Any]:
        path = self.path / SUMMARY
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} has no {SUMMARY}: the run has not finished")
        return json.loads(path.read_text())

    # ------------------------------------------------------------------------------ checkpoint
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.path / CHECKPOINT, lambda f: torch.save(state, f))

    def load_checkpoint(self) -> dict[str, Any]:
        return torch.load(self.path / CHECKPOINT, map_location="cpu", weights_only=False)


def environment(device: torch.device) -> dict[str, Any]:
    """Library versions and the device, for the summary."""
    import timm
    import torchvision

    from .. import __version__

    versions = {
        "vprompt": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {"versions": versions, "device": {"type": device.type, "name": name}, "host": platform.node()}


def reset_peak_memory(device: torch.device) -> None:
    """Restart the peak-memory mark, so a run reports its own peak and not an earlier run's in this process
    (CUDA: the allocator's peak; CPU: the kernel's resident-set high-water mark, Linux only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # not Linux, or not allowed: the peak stays the process's
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process: the CUDA allocator's peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024
