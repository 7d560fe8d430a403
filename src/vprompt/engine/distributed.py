"""Data-parallel training through torchrun and PyTorch DDP (no home-made engine).

The config's batch size is the *global* batch; without torchrun's variables the helpers here are no-ops.
Design notes: ``docs/design.md``, section ``vprompt/engine/distributed.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of processes, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on the process that writes files and prints."""
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (float64)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if not self.distributed:
            return
        if self.device.type == "cuda" and self.device.index is not None:
            dist.barrier(device_ids=[self.device.index])  # NCCL: this process's GPU, not a guess
        else:
            dist.barrier()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def setup(device: str = "auto") -> Context:
    """Join the torchrun process group when launched by torchrun; otherwise a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank=rank, world=world, device=dev)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a GPU runs asynchronously; timings need this)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def split_evenly(items: list[int], parts: int, index: int) -> list[int]:
    """The ``index``-th of ``parts`` contiguous, near-equal pieces of ``items`` (earlier pieces one longer)."""
    base, extra = divmod(len(items), parts)
    start = index * base + min(index, extra)
    return items[start : start + base + (1 if index < extra else 0)]
