"""One Tune trial: a real training run of the trial's config, reporting the dev metrics after every epoch.

The trial's resume state is the trainer's own checkpoints in its run folder (`STUDY/trials/<trial id>`);
the Tune checkpoint reported with each epoch only records which run folder and epoch it stands for. So a
trial that Tune restores (a paused trial, a restored study) trains on with `resume=True` in the same
folder, after re-reporting any epoch that the trainer finished but Tune never heard of (the study was
killed between the trainer's checkpoint and the report).

One rank trains in the trial's own process; more ranks run `trainers.worker` under torchrun, and the
trial reports each epoch as it appears in the trainer's checkpoint state.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ray import tune

from cxrlt.config import write_config
from cxrlt.errors import InputError
from cxrlt.requeue import request_stop
from trainers import distributed
from trainers.checkpointing import STATE, Checkpointer
from trainers.config import TrainConfig
from trainers.launcher import Layout, torchrun_command
from trainers.stages import members, run_training
from trainers.tune_config import LoadedTune

MARKER = "trial.json"
POLL_SECONDS = 2.0
STOP_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class TrialSpec:
    """What every trial shares: the loaded tune config (paths absolute), the study folder, the MLflow
    parent run and store."""

    loaded: LoadedTune
    study_dir: Path
    parent_run_id: str
    tracking_uri: str
    experiment: str

    def config(self, values: dict[str, Any], trial_id: str) -> TrainConfig:
        cfg = self.loaded.trial_config(values)
        return replace(
            cfg,
            run=replace(
                cfg.run,
                out_dir=self.study_dir / "trials" / trial_id,
                name=trial_id,
                experiment=self.experiment,
                tracking_uri=self.tracking_uri,
                parent_run_id=self.parent_run_id,
            ),
        )


def member_dir(cfg: TrainConfig) -> Path:
    """The one member folder a trial trains into; a trial is a single training run."""
    plan = members(cfg)
    rounds = cfg.student.iterations if cfg.stage.name == "student" else 1
    if len(plan) * rounds != 1:
        raise InputError("a tune trial trains one member: give at most one entry in resolutions and one student round")
    folder = Path(cfg.run.out_dir) / plan[0][0]
    return folder / "student-1" if cfg.stage.name == "student" else folder


def trainer_history(run_dir: Path) -> list[dict[str, float]]:
    """The per-epoch dev metrics in the trainer's newest checkpoint ([] before the first)."""
    latest = Checkpointer(run_dir, keep_last=1, rank=0).latest()
    if latest is None:
        return []
    return json.loads((latest / STATE).read_text(encoding="utf-8"))["history"]


class Reporter:
    """Reports each epoch to Tune once, in order, with a checkpoint marker naming the run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.reported = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                self.reported = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))["epoch"]

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch <= self.reported:
            return
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / MARKER).write_text(
                json.dumps({"run_dir": str(self.run_dir), "epoch": epoch}), encoding="utf-8"
            )
            self.reported = epoch
            # Ends this thread with SystemExit when the scheduler stops the trial.
            tune.report({**metrics, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))

    def catch_up(self) -> None:
        """Report the epochs the trainer has checkpointed and Tune has not seen."""
        for entry in trainer_history(self.run_dir):
            self.report(int(entry["epoch"]), {k: v for k, v in entry.items() if k not in ("epoch", "step")})


def run_trial(values: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function trainable."""
    cfg = spec.config(values, tune.get_context().get_trial_id())
    reporter = Reporter(member_dir(cfg))
    reporter.catch_up()
    nproc = spec.loaded.tune.tune.nproc_per_trial
    if nproc == 1:
        _train_in_process(cfg, reporter)
    else:
        _train_with_torchrun(cfg, nproc, reporter)


def _train_in_process(cfg: TrainConfig, reporter: Reporter) -> None:
    try:
        run_training(cfg, resume=True, on_epoch_end=lambda epoch, metrics, run_dir: reporter.report(epoch, metrics))
    finally:
        # The group of one must not outlive the trial: the next trial in this process makes its own.
        distributed.shutdown()


def _die_with_parent() -> None:
    """In the torchrun child: SIGKILL it when the trial's thread dies (its workers die with torchrun)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def torchrun_trial_command(config_file: Path, nproc: int) -> list[str]:
    return torchrun_command(Layout(nproc=nproc), "trainers.worker", [str(config_file), "--resume"])


def _train_with_torchrun(cfg: TrainConfig, nproc: int, reporter: Reporter) -> None:
    config_file = Path(cfg.run.out_dir).with_suffix(".toml")
    write_config(cfg, config_file)
    process = subprocess.Popen(
        torchrun_trial_command(config_file, nproc),
        # prctl(PR_SET_PDEATHSIG) only acts in the child itself; it calls no Python-level locks.
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
    )
    try:
        while process.poll() is None:
            time.sleep(POLL_SECONDS)
            reporter.catch_up()
        reporter.catch_up()
        if process.returncode != 0:
            raise RuntimeError(f"trial training {config_file} exited with status {process.returncode}")
    finally:
        if process.poll() is None:
            # Stopped by the scheduler: the workers checkpoint at their next step boundary and exit.
            request_stop(Path(cfg.run.out_dir), "stopped by the Tune scheduler")
            try:
                process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
