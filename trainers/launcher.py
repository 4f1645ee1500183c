"""The process layout of `cxrlt train` and `cxrlt predict`.

In this process for one rank, else torchrun, relaying preemption.

One rank on one node trains in-process (a group of one). More ranks, or several nodes, start torchrun
(`python -m torch.distributed.run`) with `trainers.worker`: standalone rendezvous on one node,
c10d on the given endpoint across nodes (the SLURM job script passes the first host of the
allocation). While torchrun runs, SIGTERM / SIGUSR1 sent to this process become a stop-request file in
the run directory, which the workers see at their next step boundary (see cxrlt.requeue for why
not forward the signal); when the workers then stop for requeue, this process exits REQUEUE_EXIT_CODE
rather than torchrun's generic failure code.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrlt.requeue import REQUEUE_EXIT_CODE, STOP_SIGNALS, request_stop
from trainers.loop import PREEMPTED


@dataclass(frozen=True)
class Layout:
    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "cxrlt"

    def __post_init__(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise ValueError("--nproc and --nnodes must be >= 1")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the first node of the allocation)")

    @property
    def in_process(self) -> bool:
        return self.nproc == 1 and self.nnodes == 1


def torchrun_command(layout: Layout, module: str, worker_args: Sequence[str]) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={layout.nproc}"]
    if layout.nnodes == 1 and not layout.rdzv_endpoint:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={layout.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={layout.rdzv_endpoint}",
            f"--rdzv-id={layout.rdzv_id}",
        ]
    return [*command, "-m", module, *worker_args]


def run_torchrun(layout: Layout, module: str, worker_args: Sequence[str], run_dir: Path) -> int:
    """Run `module`'s workers under torchrun; returns the exit status the command should end with."""
    (run_dir / PREEMPTED).unlink(missing_ok=True)
    process = subprocess.Popen(torchrun_command(layout, module, worker_args))

    def relay(signum: int, frame: object) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        request_stop(run_dir, f"{signal.Signals(signum).name} to cxrlt train (pid of torchrun {process.pid})")

    previous = {name: signal.signal(getattr(signal, name), relay) for name in STOP_SIGNALS}
    try:
        status = process.wait()
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    if status != 0 and (run_dir / PREEMPTED).is_file():
        return REQUEUE_EXIT_CODE
    return status
