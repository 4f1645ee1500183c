"""Who reads what: rank / world size / DataLoader worker, and how shards are dealt to them.

Every (rank, worker) pair is one *slot*; there are world_size x num_workers slots. With at least as many
shards as slots, slot s owns shards s, s + slots, s + 2 slots, ... (disjoint, every shard owned). With
fewer, every slot opens every shard and keeps samples whose position is congruent to s modulo the
slot count. Either way slots never share a sample, which webdataset's own ResampledShards (every
worker draws from all shards) does not give.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.utils.data

from cxrlt.errors import InputError


def distributed_context(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): explicit arguments, else torch.distributed when initialised, else RANK/WORLD_SIZE."""
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise InputError("give rank and world_size together")
        resolved = (rank, world_size)
    elif dist.is_available() and dist.is_initialized():
        resolved = (dist.get_rank(), dist.get_world_size())
    else:
        resolved = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    if not 0 <= resolved[0] < resolved[1]:
        raise InputError(f"rank {resolved[0]} is not in [0, world size {resolved[1]})")
    return resolved


def worker_context() -> tuple[int, int]:
    """(worker id, worker count) inside a DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


@dataclass(frozen=True)
class Slot:
    """One reader's share: shard positions to open and the sample stride/offset to keep within them."""

    index: int
    count: int
    shards: tuple[int, ...]
    stride: int
    offset: int

    def keeps(self, position: int) -> bool:
        return position % self.stride == self.offset

    def kept_below(self, n: int) -> int:
        """How many of positions 0 .. n-1 this slot keeps."""
        return max(0, (n - self.offset + self.stride - 1) // self.stride)


def slot_for(num_shards: int, rank: int, world_size: int, worker: int, num_workers: int) -> Slot:
    count = world_size * num_workers
    index = rank * num_workers + worker
    if num_shards >= count:
        return Slot(index, count, tuple(range(index, num_shards, count)), 1, 0)
    return Slot(index, count, tuple(range(num_shards)), count, index)
