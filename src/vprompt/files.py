"""Writing vprompt's files safely: atomically, with the user's umask, and with one clear error when it fails.

Every file a run, an adapter or a sweep writes goes through :func:`atomic_write`: the bytes go to a temporary
file in the same folder, are flushed to disk, then renamed over the target. A failure (full disk, no
permission, a read-only folder, an interruption) leaves the previous version intact and raises
:class:`WriteError`, an ``OSError`` whose message says what failed, where, and what to do. What is read back
(weights, adapter configs) goes through :func:`refuse_non_finite`: NaN or inf is refused, naming the file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Temporary files are named ``.<target name>.<random>.tmp`` (found and removed by :func:`remove_stale_temps`).
TEMP_SUFFIX = ".tmp"

_REASONS = {
    errno.ENOSPC: "no space left on the device; free some space",
    errno.EDQUOT: "disk quota exceeded; free some space",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.ENOTDIR: "a parent of it is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file name",
}


class WriteError(OSError):
    """A file could not be written; the previous version (if any) is intact."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


#: a write that fails with less free space than this left on its file system failed for want of space
FULL_BELOW = 1 << 20


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``folder`` (``None``: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def error_code(error: BaseException, folder: str | os.PathLike) -> int:
    """The errno of a failed write; ENOSPC also for writers that lose it (torch's
    ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos``) when the disk is full."""
    code = getattr(error, "errno", None)
    if code:
        return code
    free = free_bytes(folder)
    full = free is not None and free < FULL_BELOW
    return errno.ENOSPC if full or reason(error) == _REASONS[errno.ENOSPC] else errno.EIO


def reason(error: BaseException) -> str:
    """A short human reason for an OS-level failure, with the usual remedy."""
    code = getattr(error, "errno", None)
    if code in _REASONS:
        return _REASONS[code]
    text = str(error)
    if "No space left" in text or "file write failed" in text:  # torch's and safetensors' wording
        return _REASONS[errno.ENOSPC]
    if getattr(error, "strerror", None):
        return error.strerror
    return text.splitlines()[0] if text else type(error).__name__


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def ensure_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create ``path`` (and its parents) or raise a :class:`WriteError` that names it."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise WriteError(
            errno.ENOENT,
            f"cannot use {path} as a {what}: it is a broken symlink (to {os.readlink(path)!r}); "
            "remove it or choose another path",
        )
    if path.exists() and not path.is_dir():
        raise WriteError(
            errno.ENOTDIR, f"cannot use {path} as a {what}: it is a file, not a folder; choose another path"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(e.errno, f"cannot create the {what} {path}: {reason(e)}") from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it into place.

    The file gets the mode a plain ``open()`` would give (0666 minus the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    ensure_dir(path.parent)
    previous = path.exists()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise WriteError(e.errno, f"cannot write {path}: {reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        code = error_code(e, path.parent)  # before the partial file is deleted and its space freed
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        why = _REASONS.get(code) or reason(e)
        kept = "the previous version is intact" if previous else "there was no previous version"
        raise WriteError(code, f"cannot write {path}: {why}; {kept}") from e


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files that an interrupted :func:`atomic_write` (e.g. ``kill -9``) left in ``folder``.

    Call it only while holding the folder's lock (no other writer can be mid-write).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def non_finite(data: object, key: str = "") -> list[str]:
    """The keys (``options.alpha``, ``head.weight``) at which ``data`` (parsed JSON, or a dict of tensors)
    holds NaN or ±inf."""
    import math

    import torch

    if isinstance(data, dict):
        return [k for name, v in data.items() for k in non_finite(v, f"{key}.{name}" if key else str(name))]
    if isinstance(data, list):
        return [k for i, v in enumerate(data) for k in non_finite(v, f"{key}[{i}]")]
    if isinstance(data, float):
        return [] if math.isfinite(data) else [key]
    if isinstance(data, torch.Tensor) and (data.is_floating_point() or data.is_complex()):
        return [] if bool(torch.isfinite(data).all()) else [key]
    return []


def refuse_non_finite(data: object, path: str | os.PathLike) -> None:
    """Refuse what was read from ``path`` when it holds NaN or ±inf: one line naming the file and the keys
    (such values would give NaN outputs silently)."""
    keys = non_finite(data)
    if keys:
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        raise ValueError(
            f"{path}: non-finite values (NaN or inf) in {', '.join(keys[:3])}{more}; the file is damaged or "
            "comes from a diverged training, not loading it"
        )
