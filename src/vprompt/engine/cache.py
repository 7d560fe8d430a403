"""The frozen-prefix cache: a site's activations for a whole dataset, computed once.

Used when nothing trained acts before the method's first site and the training transform is
deterministic; that the captured activation depends on nothing trainable is checked, not assumed.
Design notes: ``docs/design.md``, section ``vprompt/engine/cache.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..files import WriteError, reason
from ..model import TunedModel
from .distributed import Context, synchronize
from .run_data import loader_options, private_generator

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: ``auto`` keeps a cache in memory up to this many bytes (and never more than a quarter of the RAM)
AUTO_MEMORY_LIMIT = 4 * 2**30
#: an in-memory cache of a GPU run stays on the GPU when it takes at most this share of its free memory
DEVICE_SHARE = 0.5


class CacheRefused(ValueError):
    """A frozen-prefix cache was asked for where it would change the results."""


def cache_site(model: TunedModel, random_inputs: str | None = None) -> tuple[str | None, str]:
    """``(site, why)``: the site a cache may hold, or ``None`` and the reason it may not.
    ``random_inputs``: why the training inputs change from epoch to epoch (random augmentation, mixup), if
    they do; no cache then."""
    if random_inputs:
        return None, f"{random_inputs}, so activations change every epoch"
    bb = model.backbone
    site = model.method.first_site(bb)
    if not bb.can_resume_at(site):
        return None, f"{bb.name!r} cannot continue a forward pass from site {site!r}"
    was_training = model.training
    model.train()  # dropout and friends as in training
    try:
        probe = torch.zeros(1, *model.input_size, device=next(model.parameters()).device)
        with torch.enable_grad():
            activation = bb.site(site).capture(bb, probe)
    finally:
        model.train(was_training)
    if activation.requires_grad:
        return None, f"something trained acts before site {site!r} (its activation depends on it)"
    return site, f"activations at {site!r} computed once"


def ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


@dataclass
class FeatureCache:
    """Raw activations at ``site`` (``features[i]`` for item ``i``) and the labels."""

    site: str
    features: torch.Tensor
    labels: torch.Tensor
    seconds: float
    storage: str

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()

    @property
    def device(self) -> torch.device:
        return self.features.device

    def batch(self, indices: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.features.device)
        x = self.features[index].to(device, non_blocking=True).float()
        return x, self.labels[index].to(device, non_blocking=True)

    def loader(self, batch_size: int, ctx: Context):
        """This process's contiguous share, in order, as ``(activations, labels)`` batches."""
        from .distributed import split_evenly

        indices = split_evenly(list(range(len(self.labels))), ctx.world, ctx.rank)
        for start in range(0, len(indices), batch_size):
            yield self.batch(indices[start : start + batch_size], ctx.device)


def estimate_bytes(model: TunedModel, site: str, items: int, dtype: str) -> int:
    shape = model.site_shape(site)
    return items * math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()


def choose_storage(requested: str, nbytes: int) -> str | None:
    """``memory`` or ``disk`` as requested; ``auto`` is memory when it fits the budget, else no cache."""
    if requested in ("memory", "disk"):
        return requested
    return "memory" if nbytes <= min(AUTO_MEMORY_LIMIT, ram_bytes() // 4) else None


def cache_device(
    storage: str, nbytes: int, device: torch.device, free_bytes: int | None = None
) -> torch.device:
    """Where an in-memory cache lives: on the run's GPU when it takes at most :data:`DEVICE_SHARE` of
    the GPU's free memory (``free_bytes``, measured when not given), else in host memory."""
    if storage != "memory" or device.type != "cuda":
        return torch.device("cpu")
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return device if nbytes <= DEVICE_SHARE * free_bytes else torch.device("cpu")


@torch.no_grad()
def build_cache(
    model: TunedModel,
    site: str,
    dataset: Dataset,
    ctx: Context,
    batch_size: int,
    dtype: str,
    storage: str,
    directory: str | Path | None = None,
    workers: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> FeatureCache:
    """Capture the raw activation at ``site`` for every item of ``dataset`` (in order), under
    ``autocast`` (the run's mixed precision); ``workers`` as for the run's loaders (None: default)."""
    start = time.perf_counter()
    bb = model.backbone
    shape = (len(dataset), *model.site_shape(site))
    torch_dtype = DTYPES[dtype]
    if storage == "disk":
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)  # other processes may be ahead of rank 0
        folder = Path(tempfile.mkdtemp(prefix="vprompt-cache-", dir=directory))
        path = folder / f"{site}.bin"
        nbytes = math.prod(shape) * torch.empty((), dtype=torch_dtype).element_size()
        try:  # reserve the space now: a full disk under a memory map is a SIGBUS later, not an error
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, max(nbytes, 1))
            finally:
                os.close(fd)
        except OSError as e:
            path.unlink(missing_ok=True)
            folder.rmdir()
            raise WriteError(
                e.errno,
                f"--cache disk: cannot reserve {nbytes / 2**20:.0f} MiB in {folder.parent}: {reason(e)}"
                " (or use --cache memory / off)",
            ) from None
        features = torch.from_file(str(path), shared=True, size=math.prod(shape), dtype=torch_dtype)
        features = features.view(shape)
        path.unlink()  # the mapping stays valid; the space is freed when the tensor is
        folder.rmdir()
    else:
        where = cache_device(storage, math.prod(shape) * torch_dtype.itemsize, ctx.device)
        features = torch.empty(shape, dtype=torch_dtype, device=where)
    labels = torch.empty(len(dataset), dtype=torch.long, device=features.device)
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        generator=private_generator(),
        **loader_options(dataset, workers, ctx.device),
    )
    position = 0
    try:
        for x, y in loader:
            with autocast():
                activation = bb.site(site).capture(bb, x.to(ctx.device, non_blocking=True))
            features[position : position + len(y)] = activation.to(features.device, torch_dtype)
            labels[position : position + len(y)] = y.to(features.device)
            position += len(y)
    finally:
        model.train(was_training)
    synchronize(ctx.device)
    return FeatureCache(site, features, labels, time.perf_counter() - start, storage)


# ------------------------------------------------------------------------------ shared by a sweep
class SharedCaches:
    """Frozen-prefix caches shared by the runs of one sweep, by key (see ``Trainer.cache_key``): built by
    the first run that needs one, reused read-only by the others.

    ``folder`` None: in this process's memory (the runs of a local sweep), the oldest dropped beyond
    ``limit`` bytes. With a ``folder``: on disk, for runs in several processes (Ray): the first process
    builds and writes ``<folder>/<key>/`` under a file lock, the others memory-map it read-only.
    """

    def __init__(self, folder: str | Path | None = None, limit: int | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.limit = limit if limit is not None else min(AUTO_MEMORY_LIMIT, ram_bytes() // 4)
        self.held: dict[str, FeatureCache] = {}

    def get(self, key: str, build: Callable[[], FeatureCache]) -> tuple[FeatureCache, bool]:
        """``(cache, built)``: the cache of ``key``, built with ``build`` if no run has built it yet."""
        if self.folder is None:
            if key in self.held:
                return self.held[key], False
            cache = build()
            self.held[key] = cache
            while len(self.held) > 1 and sum(c.nbytes for c in self.held.values()) > self.limit:
                del self.held[next(iter(self.held))]
            return cache, True
        where = self.folder / key
        where.mkdir(parents=True, exist_ok=True)
        lock = _wait_for_lock(where)
        try:
            if (where / "meta.json").is_file():
                return _read_shared(where), False
            cache = build()
            _write_shared(where, cache)
            return cache, True
        finally:
            lock.close()


def _wait_for_lock(where: Path):
    """An exclusive lock on ``<where>/.lock``, waiting for the process that builds the cache."""
    import fcntl

    handle = open(where / ".lock", "a+")  # noqa: SIM115 - held until the caller closes it
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _write_shared(where: Path, cache: FeatureCache) -> None:
    import json

    for name, tensor in (("features", cache.features), ("labels", cache.labels)):
        tmp = where / f"{name}.bin.tmp"
        tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tofile(tmp)
        os.replace(tmp, where / f"{name}.bin")
    meta = {
        "site": cache.site,
        "shape": list(cache.features.shape),
        "dtype": str(cache.features.dtype).removeprefix("torch."),
        "items": len(cache.labels),
        "seconds": cache.seconds,
    }
    tmp = where / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, where / "meta.json")  # last: its presence says the cache is complete


def _read_shared(where: Path) -> FeatureCache:
    """A cache written by :func:`_write_shared`, memory-mapped privately: no write reaches the file."""
    import json

    meta = json.loads((where / "meta.json").read_text())
    shape, dtype = tuple(meta["shape"]), DTYPES[meta["dtype"]]
    numel = math.prod(shape)
    expected = {"features": numel * dtype.itemsize, "labels": meta["items"] * 8}
    for name, size in expected.items():
        if (where / f"{name}.bin").stat().st_size != size:
            raise ValueError(f"{where / name}.bin: not the {size} bytes its meta.json says; delete {where}")
    features = torch.from_file(str(where / "features.bin"), shared=False, size=numel, dtype=dtype)
    labels = torch.from_file(str(where / "labels.bin"), shared=False, size=meta["items"], dtype=torch.long)
    return FeatureCache(meta["site"], features.view(shape), labels, 0.0, "disk (shared)")


_SHARED: ContextVar[SharedCaches | None] = ContextVar("vprompt_shared_caches", default=None)


@contextlib.contextmanager
def sharing(store: SharedCaches | None):
    """Inside, runs share their frozen-prefix caches through ``store`` (None: each run its own)."""
    token = _SHARED.set(store)
    try:
        yield store
    finally:
        _SHARED.reset(token)


def shared_store() -> SharedCaches | None:
    """The store of the current :func:`sharing` scope, or None."""
    return _SHARED.get()
