"""The process group and the few collectives the trainer needs.

One code path for every layout: torchrun (local `--nproc`, or one torchrun per node under SLURM) sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain `srun` task per rank gets them
from SLURM's variables; a lone process (a Tune trial, a test) becomes a group of one on a free local
port. DeepSpeed then initialises the group: NCCL when CUDA is there, gloo otherwise.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import deepspeed
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # CPU collectives for control decisions (stop requests); None when the default group is gloo.
    control: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous_from_slurm(env: Mapping[str, str]) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT for a task that srun started directly
    (one task per rank, no torchrun), derived from SLURM's variables; {} when not under srun."""
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env or "RANK" in env:
        return {}
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
    ).stdout.split()
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": hosts[0] if hosts else "127.0.0.1",
        # Every job gets its own port so two jobs sharing a head node do not collide.
        "MASTER_PORT": env.get("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)),
    }


def die_with_launcher() -> None:
    """Under torchrun, ask Linux to SIGKILL this worker when its launcher dies.

    torchrun starts every worker in a session of its own, so a launcher killed with SIGKILL (or an
    out-of-memory kill) would leave the workers training on as orphans, still writing into the run
    directory that a resumed run is about to use.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the request was in place
        os._exit(1)


def init(backend: str = "auto") -> Context:
    """Join (or create) the process group; idempotent within a process."""
    die_with_launcher()
    os.environ.update(rendezvous_from_slurm(os.environ))
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        chosen = ("nccl" if cuda else "gloo") if backend == "auto" else backend
        deepspeed.init_distributed(dist_backend=chosen, verbose=False)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device, _control_group())


def shutdown() -> None:
    """Leave the process group, so that a later `init` in the same process forms a fresh one."""
    if dist.is_initialized():
        dist.destroy_process_group()
    # DeepSpeed clones the world group once per process and keeps the clone after the group is destroyed;
    # the next engine's parameter broadcast would then name a group torch no longer knows ("Group ... is
    # not registered"). Forgetting the clone lets tests, benchmarks and notebooks build one engine per group.
    deepspeed.utils.groups._WORLD_GROUP = None


def _control_group() -> Any:
    """A gloo group beside an NCCL default group. Agreeing on a CPU flag through NCCL would need a GPU
    tensor and a host copy, which waits for every queued kernel: one such sync per step left the GPU
    idle while the next step was launched (20-30% of the step time on an H100)."""
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank when `flag` is True on at least one (one CPU all-reduce, no GPU sync)."""
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=ctx.control)
    return bool(value.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    out = values.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (in rank order), None elsewhere."""
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist.barrier()
