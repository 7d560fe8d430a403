"""A run directory: every file a training run writes, each written atomically.

```text
<run>/config.yaml         the resolved config, every protocol switch included
<run>/metrics.jsonl       one line per epoch (loss, accuracy, lr, time; validation where measured)
<run>/summary.json        the result: accuracies, parameters, time, memory, throughput, versions, device
<run>/adapter/            the kept weights, trainable state only (vprompt_model.safetensors + vprompt_config.json; LoRA also peft's files)
<run>/checkpoint.pt       resumable state after the last finished epoch
<run>/steps.csv           per-step loss and lr (--log csv, the default); tensorboard/ or wandb/ instead
<run>/eval-<split>/       with --details: per-class accuracy, confusion matrix, each image's prediction
```
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
import pickletools
import platform
import resource
import shutil
import sys
import zipfile
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from ..files import WriteError, atomic_write, ensure_dir, remove_stale_temps, write_text
from .tracking import TRACKING_FILES

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ADAPTER = "adapter"
CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
ERROR = "error.txt"  # a sweep's record of a failed run
EVAL_PREFIX = "eval-"  # <run>/eval-<split>/: an evaluation's details (per class, confusion, each image)
#: everything vprompt itself puts into a run folder (anything else there is the user's)
RUN_FILES = {CONFIG, METRICS, SUMMARY, ADAPTER, CHECKPOINT, LOCK, ERROR} | TRACKING_FILES
CHECKPOINT_FORMAT = "vprompt-checkpoint"
CHECKPOINT_VERSION = 2


def write_json(path: Path, data: Any) -> None:
    """JSON with no NaN/inf in it (they are not JSON; a run that produced one has already failed)."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


class RunLocked(RuntimeError):
    """Another process is using the run folder."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: damaged, truncated, not vprompt's, or holding code."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is damaged") from None


def safe_torch_load(path: Path | io.BytesIO, what: str) -> Any:
    """``torch.load(weights_only=True)`` with one clear error for anything that is not plain tensors and
    containers (a pickle that would run code, a truncated or random file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{what}: cannot be read ({e.strerror or e})") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        if "Weights only load failed" in str(e) and _imports_code(path):
            raise CheckpointError(
                f"{what}: refused to load, it holds Python objects that could run code (only tensors and "
                "plain containers are read)"
            ) from None
        raise CheckpointError(f"{what}: not a vprompt checkpoint (corrupt or another format)") from None


def _imports_code(source: Path | io.BytesIO) -> bool:
    """Whether a file that torch refused is a whole pickle (bare, or a torch zip's ``data.pkl``) that
    imports a callable, as one that runs code does, rather than random or damaged bytes. Only parsed,
    never unpickled."""
    try:
        data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        return any(
            op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ") for op, _, _ in pickletools.genops(data)
        )
    except Exception:  # not a whole pickle: damaged or another format
        return False


def lock_folder(path: Path, what: str) -> IO:
    """Create ``path`` if needed and take its exclusive lock (an ``flock`` on ``path/.lock``, which dies with
    the process, even on ``kill -9``); :class:`RunLocked` when another process holds it. Closing the
    returned file releases the lock."""
    ensure_dir(path, what)
    try:
        f = open(path / LOCK, "a")  # noqa: SIM115 - held open while the folder is in use
    except OSError as e:
        raise WriteError(e.errno, f"cannot write into the {what} {path}: {e.strerror}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunLocked(
            f"{what} {path} is in use by another vprompt process; wait for it or choose another --output"
        ) from None
    return f


class RunDir:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_file = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        return (self.path / SUMMARY).is_file()

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    # ------------------------------------------------------------------------- the folder itself
    def foreign_entries(self) -> list[str]:
        """Entries of the folder that vprompt did not write (the user's files)."""
        if not self.path.is_dir():
            return []
        theirs = []
        for entry in sorted(os.listdir(self.path)):
            temp = entry.startswith(".") and entry.endswith(".tmp")
            ours = entry in RUN_FILES or entry.startswith(("vprompt-cache-", EVAL_PREFIX))
            if not ours and not temp:
                theirs.append(entry)
        if not theirs and (self.path / CONFIG).is_file():
            if self.holds_run_config():
                return []
            theirs.append(f"{CONFIG} (not a vprompt run config)")
        return theirs

    def holds_run_config(self) -> bool:
        """The folder's ``config.yaml`` is one a vprompt run wrote."""
        with contextlib.suppress(Exception):
            config = yaml.safe_load((self.path / CONFIG).read_text())
            return isinstance(config, dict) and "resolved" in config
        return False

    def claim(self) -> None:
        """Create the folder if needed and take its lock (one process per run folder); remove temporary files
        that an interrupted write left. A folder that holds other files than a run's is refused."""
        if self.path.exists() and not self.path.is_dir():
            raise WriteError(errno.ENOTDIR, f"--output {self.path} is a file, not a folder; choose another")
        outer = next((p for p in self.path.resolve().parents if RunDir(p).holds_run_config()), None)
        if outer is not None:
            raise FileExistsError(
                f"--output {self.path} is inside the run folder {outer}; choose a folder outside it "
                "(a run folder never holds another run)"
            )
        foreign = self.foreign_entries()
        if foreign:
            raise FileExistsError(
                f"{self.path} is not a vprompt run folder (it holds {', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}); choose another --output, nothing was written"
            )
        self._lock_file = lock_folder(self.path, "run folder")
        remove_stale_temps(self.path)
        remove_stale_temps(self.path / ADAPTER)

    def clear(self) -> None:
        """Delete this run's own files so that it can be trained again; a user's files in the folder are
        never deleted (the folder is refused instead)."""
        foreign = self.foreign_entries()
        if foreign:
            raise FileExistsError(
                f"{self.path} holds files that are not a vprompt run's ({', '.join(foreign[:3])}); "
                "not deleting it: move them or choose another folder"
            )
        if not self.path.is_dir():
            return
        for entry in os.listdir(self.path):
            target = self.path / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif entry != LOCK:
                target.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # ---------------------------------------------------------------------------------- config
    def write_config(self, config: dict[str, Any]) -> None:
        write_text(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        path = self.path / CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} is not a vprompt run directory (no {CONFIG})")
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: not a valid run config ({first})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path}: not a valid run config (expected a mapping)")
        return config

    # --------------------------------------------------------------------------------- metrics
    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite the whole metrics file (so a resumed run never keeps rows of epochs it redid)."""
        write_text(self.path / METRICS, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON lines ({e}); the file is damaged") from None

    # --------------------------------------------------------------------------------- summary
    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / SUMMARY, summary)

    def read_summary(self) -> dict[str, Any]:
        path = self.path / SUMMARY
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} has no {SUMMARY}: the run has not finished")
        summary = _read_json(path)
        if not isinstance(summary, dict):
            raise ValueError(f"{path}: not a run summary (expected a JSON object)")
        return summary

    # ------------------------------------------------------------------------------ checkpoint
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Plain tensors and containers only (loadable with ``weights_only=True``), wrapped with a SHA-256
        of the payload so that a damaged file is detected on load, never resumed from."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        wrapper = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
        }
        atomic_write(self.path / CHECKPOINT, lambda f: torch.save(wrapper, f))

    def load_checkpoint(self) -> dict[str, Any]:
        path = self.path / CHECKPOINT
        hint = f"delete {path} to start the run over"
        try:
            wrapper = safe_torch_load(path, str(path))
            ok = isinstance(wrapper, dict) and wrapper.get("format") == CHECKPOINT_FORMAT
            if not ok or wrapper.get("version") != CHECKPOINT_VERSION:
                raise CheckpointError(f"{path}: not a vprompt checkpoint of this version")
            payload = wrapper["payload"]
            if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
                raise CheckpointError(f"{path}: damaged checkpoint (no payload)")
            data = payload.numpy().tobytes()
            if hashlib.sha256(data).hexdigest() != wrapper.get("sha256"):
                raise CheckpointError(f"{path}: damaged checkpoint (checksum mismatch)")
            state = safe_torch_load(io.BytesIO(data), str(path))
            if not isinstance(state, dict):
                raise CheckpointError(f"{path}: damaged checkpoint (no state)")
            return state
        except CheckpointError as e:
            raise CheckpointError(f"{e}; {hint}") from None


def environment(device: torch.device) -> dict[str, Any]:
    """Library versions and the device, for the summary."""
    import timm
    import torchvision

    from .._version import __version__

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
        info = {"type": device.type, "name": torch.cuda.get_device_name(device)}
    else:  # float32 results depend on the kernels torch chose (their summation order): part of the record
        name = f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        info = {"type": device.type, "name": name, "kernels": torch.backends.cpu.get_cpu_capability()}
    return {"versions": versions, "device": info, "host": platform.node()}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def provenance() -> dict[str, Any]:
    """What made the run: the command line, the working directory, vprompt's version, and its git commit
    when vprompt runs from a checkout of its repository (``git_dirty``: uncommitted changes there)."""
    import shlex
    import subprocess

    from .._version import __version__

    record: dict[str, Any] = {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
        "cwd": os.getcwd(),
        "vprompt": __version__,
        "git_commit": None,
    }
    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if (
        top and (Path(top) / "src" / "vprompt").resolve() == package
    ):  # vprompt's own checkout, not a user's repo
        record["git_commit"] = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
        record["git_dirty"] = bool(status) if status is not None else None
    return record


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
