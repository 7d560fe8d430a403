"""Build the processed VTAB-1k layout (``<out>/<task>/{train800,val200,train800val200,test}.txt`` + images)
from TFDS, task by task: with progress, resumable, atomic and verified.

Nothing is deleted through a symlink; offline, tasks that need a download stop at once.
Design notes: ``docs/design.md``, section ``vprompt/data/prepare/convert.py``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from ...files import ensure_dir
from ..checks import check_dataset
from .vtab1k import VTAB1K, VtabTask

MARKER = ".vprompt-prepared.json"
PARTIAL = ".vprompt-partial"
#: how images are written: PNG, lossless (folders prepared before used JPEG quality 95 and stay readable:
#: the split lists name each file)
IMAGE_SUFFIX = ".png"
WRITTEN_SPLITS = ("train800", "val200", "test")
#: Where :func:`network_reachable` connects (TFDS's bucket; a set HTTPS proxy instead) and how long it waits.
PROBE_HOST, PROBE_TIMEOUT_S = ("storage.googleapis.com", 443), 3.0


@dataclass(frozen=True)
class Outcome:
    """What happened to one task: ``prepared``, ``skipped`` (already there), ``manual`` (needs a manual
    download) or ``failed``; ``message`` says why or what was written."""

    task: str
    status: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status in ("prepared", "skipped")


def _reader(spec: str, tfds_dir):
    from .tfds_reader import TfdsReader

    return TfdsReader(spec, tfds_dir)


def probe_target() -> tuple[str, int]:
    """:data:`PROBE_HOST`, or the HTTPS proxy downloads would go through."""
    proxy = urllib.request.getproxies().get("https")
    return (urlsplit(proxy).hostname or "", urlsplit(proxy).port or 80) if proxy else PROBE_HOST


def network_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to :data:`PROBE_HOST` (or the HTTPS proxy, if one is set) opens within
    ``timeout`` seconds, the name lookup included."""
    host = probe_target()
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(host, timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)  # a slow name lookup ignores the timeout
    thread.start()
    thread.join(timeout)
    return bool(opened)


def select_tasks(tasks: Iterable[str] | None) -> list[VtabTask]:
    if not tasks:
        return list(VTAB1K.values())
    names = [t.strip() for item in tasks for t in item.split(",") if t.strip()]
    unknown = [t for t in names if t not in VTAB1K]
    if unknown:
        raise ValueError(f"unknown VTAB-1k task(s) {', '.join(unknown)}; tasks: {', '.join(VTAB1K)}")
    return [VTAB1K[t] for t in dict.fromkeys(names)]


def prepare_vtab1k(
    out: str | os.PathLike,
    tasks: Iterable[str] | None = None,
    tfds_dir: str | os.PathLike | None = None,
    reader: Callable | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Prepare the VTAB-1k tasks (all 19 by default) under ``out``; returns one :class:`Outcome` per task.

    ``reader(tfds_spec, tfds_dir)`` opens a TFDS dataset (default :class:`~.tfds_reader.TfdsReader`).
    A task that fails or needs a manual download does not stop the others.
    """
    reader = reader or _reader
    chosen = select_tasks(tasks)
    if not str(out).strip():
        raise ValueError("the output folder (--output) is empty; name the folder to write the tasks into")
    out = ensure_dir(Path(out).expanduser(), "data root (--output)")
    plain_folder(out / PARTIAL)
    outcomes = []
    online = functools.cache(network_reachable)  # probed once per command, and only if a task needs it
    for number, task in enumerate(chosen, 1):
        where = f"[{number}/{len(chosen)}] {task.name}"
        outcome = _prepare_task(task, out, tfds_dir, reader, progress, where, online)
        log(f"{where}: {outcome.status}: {outcome.message}")
        outcomes.append(outcome)
    partial = out / PARTIAL
    if partial.is_dir() and not any(partial.iterdir()):
        partial.rmdir()
    return outcomes


def _prepare_task(task: VtabTask, out: Path, tfds_dir, reader, progress: bool, where: str, online) -> Outcome:
    final = out / task.name
    if (final / MARKER).is_file():
        return Outcome(task.name, "skipped", f"already prepared in {final}")
    if final.exists():
        return Outcome(
            task.name,
            "failed",
            f"{final} exists but was not written by vprompt data prepare; move it away or choose another --output",
        )
    source = reader(task.tfds, tfds_dir)  # no TensorFlow Datasets at all: ImportError, stops the command
    try:
        if source.needs_manual_download():
            return Outcome(
                task.name,
                "manual",
                f"TFDS cannot download {task.tfds_name}: put its files in {source.manual_dir} and run again. "
                + " ".join(source.manual_instructions.split()),
            )
        if source.needs_download() and not online():
            return Outcome(
                task.name,
                "failed",
                f"no network ({probe_target()[0]} cannot be reached), so TFDS cannot download "
                f"{task.tfds_name}: run this command with --tfds-dir DIR on a machine that is online, "
                "copy DIR here and pass --tfds-dir DIR",
            )
        source.prepare()
        counts = source.counts()
        slices = task.slices(counts)
    except ImportError as e:  # a package one builder needs
        return Outcome(task.name, "failed", f"TFDS {task.tfds} needs a Python package: {e} (pip install it)")
    except Exception as e:  # TFDS raises many kinds (download errors, missing files, bad versions)
        return Outcome(task.name, "failed", f"TFDS {task.tfds}: {type(e).__name__}: {e}")
    staging = out / PARTIAL / task.name
    if plain_folder(staging):
        shutil.rmtree(staging)  # an interrupted earlier attempt: ours by name, never finished
    staging.mkdir(parents=True)
    try:
        written = _write_task(task, source, slices, staging, progress, where)
        problems = _verify(task, staging.parent, written)
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        return Outcome(task.name, "failed", f"{type(e).__name__}: {e}")
    if problems:
        shutil.rmtree(staging, ignore_errors=True)
        return Outcome(task.name, "failed", "the written files do not pass the check: " + "; ".join(problems))
    os.rename(staging, final)
    note = f" ({source.note})" if getattr(source, "note", "") else ""
    sizes = ", ".join(f"{k} {v}" for k, v in written.items())
    return Outcome(task.name, "prepared", f"{sizes} from {task.tfds_name} {source.version}{note}")


def plain_folder(path: Path) -> bool:
    """Whether ``path``, a staging folder vprompt deletes, exists; a ``ValueError`` unless it is absent or a
    plain folder (a symlink is never deleted through, whatever it points to)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = f"a symlink to {os.readlink(path)!r}" if path.is_symlink() else "not a folder"
        raise ValueError(
            f"{path}: the staging folder of vprompt data prepare is {kind}; remove it (vprompt deletes "
            "nothing through it) and run again"
        )
    return path.exists()


def _write_task(task, source, slices, staging: Path, progress: bool, where: str) -> dict[str, int]:
    from tqdm.auto import tqdm

    total = sum(stop - start for split in WRITTEN_SPLITS for _, start, stop in slices[split])
    lines: dict[str, list[str]] = {}
    with tqdm(total=total, desc=where, unit="img", disable=not progress, file=sys.stderr) as bar:
        for split in WRITTEN_SPLITS:
            folder = staging / "images" / split
            folder.mkdir(parents=True)
            rows = []
            for tfds_split, start, stop in slices[split]:
                got = 0
                for example in source.examples(tfds_split, start, stop):
                    label = task.label(example)
                    if not 0 <= label < task.num_classes:
                        raise ValueError(
                            f"{tfds_split}[{start + got}]: derived label {label} is outside "
                            f"[0, {task.num_classes})"
                        )
                    rel = f"images/{split}/{len(rows):06d}{IMAGE_SUFFIX}"
                    write_image(task.image(example), staging / rel)
                    rows.append(f"{rel} {label}")
                    got += 1
                    bar.update(1)
                if got != stop - start:
                    raise ValueError(f"TFDS gave {got} examples for {tfds_split}[{start}:{stop}]")
            lines[split] = rows
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (staging / f"{split}.txt").write_text("\n".join(rows) + "\n")
    written = {split: len(rows) for split, rows in lines.items()}
    record = {
        "task": task.name,
        "tfds": task.tfds,
        "tfds_version_read": source.version,
        "note": getattr(source, "note", ""),
        "definition": f"google-research/task_adaptation: task_adaptation/data/{task.source} {task.args}".strip(),
        "label": task.label.__name__,
        "tfds_split_sizes": source.counts(),
        "slices": {k: [f"{s}[{a}:{b}]" for s, a, b in v] for k, v in slices.items()},
        "written": written,
        "image_format": "png (lossless: decodes to the pixels TFDS gave)",
    }
    (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return written


def write_image(pixels, path: Path) -> None:
    """An RGB ``uint8`` array as a PNG file: lossless, it decodes to exactly ``pixels``."""
    Image.fromarray(pixels, "RGB").save(path, format="PNG")


def _verify(task: VtabTask, root: Path, written: dict[str, int]) -> list[str]:
    """``vprompt data check``'s checks on the staged task: every file present, labels in range, the exact
    counts (800 / 200 / 1000 / the test part), a sample of images decoded."""
    expected = {"train": 800, "val": 200, "trainval": 1000, "test": written["test"]}
    report = check_dataset(f"vtab1k:{task.name}", root, full=False, sample=16, expected_sizes=expected)
    return report.problems
