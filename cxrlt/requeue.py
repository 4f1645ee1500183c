"""The preemption protocol shared by the trainer and the SLURM job scripts.

A long command (train, tune, synth train) is asked to stop in either of two ways:
- a signal, SIGUSR1 (SLURM's `--signal=USR1@T`) or SIGTERM, delivered to its processes;
- a stop-request file `STOP_REQUEST_NAME` in its run directory, which any launcher layer can write
  (a job script's trap, `cxrlt train`'s own parent process) without knowing which processes are the
  workers: torchrun's agent dies on SIGUSR1 and gives its workers only 30 s after SIGTERM, so relaying
  the request through the file is what works for every launch layout.
It then saves a checkpoint at the next step boundary on every rank and exits with REQUEUE_EXIT_CODE,
which tells a job script to requeue itself; the requeued job resumes from the latest checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrlt.atomic import write_text_atomic

# EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry".
REQUEUE_EXIT_CODE = 75
STOP_REQUEST_NAME = "STOP_REQUESTED"
STOP_SIGNALS = ("SIGUSR1", "SIGTERM")


def request_stop(run_dir: str | os.PathLike, reason: str) -> Path:
    """Ask the command running in `run_dir` to checkpoint and exit for requeue."""
    return write_text_atomic(Path(run_dir) / STOP_REQUEST_NAME, reason + "\n")


def stop_requested(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / STOP_REQUEST_NAME).exists()


def clear_stop_request(run_dir: str | os.PathLike) -> None:
    """Called when a run (re)starts, so a request served by the previous attempt is not served again."""
    (Path(run_dir) / STOP_REQUEST_NAME).unlink(missing_ok=True)
