"""`cxrlt tune` end to end with real Ray, the real trainer and a real MLflow store: a 4-trial ASHA study on
the starter at 32 px is SIGKILLed after its first report, resumed with --resume, stopped by a stop
request (a SLURM preemption: exit 75) after its next report, and resumed again to the end; the tests read
what it left: every trial finished once, ASHA stopped the trials that could not learn, the MLflow parent
has one child run per trial with its per-epoch metrics, and the best config trains with `cxrlt train`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest

from cxrlt.config import load_config
from cxrlt.requeue import REQUEUE_EXIT_CODE, request_stop
from cxrlt.tracking import Tracker, sqlite_uri
from tests.cli import CXRLT, cxrlt, cxrlt_forked
from tests.tune.conftest import tune_args
from trainers import tune_trial
from trainers.config import TrainConfig

pytestmark = pytest.mark.timeout(600)
EPOCHS = 2  # schedule.epochs of tune-test.toml, ASHA's max_t


@dataclass(frozen=True)
class Study:
    work: Path
    dir: Path
    table: pd.DataFrame
    parent_id: str
    trials_before_kill: set[str]

    @property
    def tracker(self) -> Tracker:
        return Tracker(sqlite_uri(self.work))


def _tune_checkpoints(study: Path) -> set[Path]:
    """Tune's newest checkpoint of every trial: one more report changes this set."""
    return set((study / "study").glob("run_trial_*/checkpoint_*"))


def _start_and_wait_for_a_report(args: list[str], cwd: Path, study: Path, timeout: float = 300) -> subprocess.Popen:
    before = _tune_checkpoints(study)
    process = subprocess.Popen(
        [str(CXRLT), *args],
        cwd=cwd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while _tune_checkpoints(study) <= before:
        assert process.poll() is None, f"tune ended before a new report:\n{process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no trial reported in time"
        time.sleep(0.2)
    return process


def _kill_after_first_report(args: list[str], cwd: Path, study: Path) -> None:
    process = _start_and_wait_for_a_report(args, cwd, study)
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, signal.SIGKILL)  # the driver, Ray's daemons and the trials: one session
    process.communicate()
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"processes outlived the killed study: {alive}"
    assert not (study / "results.csv").exists()


@pytest.fixture(scope="module")
def study(starter64: Path, tmp_path_factory: pytest.TempPathFactory) -> Study:
    work = tmp_path_factory.mktemp("tune")
    folder = work / "study"
    args = tune_args(starter64, folder)
    _kill_after_first_report(args, work, folder)
    parent_id = (folder / "mlflow_run_id").read_text().strip()
    before = {p.name for p in (folder / "trials").iterdir()}
    preempted = _start_and_wait_for_a_report([*args, "--resume"], work, folder)
    request_stop(folder, "SIGUSR1 from SLURM (test)")
    _, stderr = preempted.communicate(timeout=300)
    assert preempted.returncode == REQUEUE_EXIT_CODE, stderr[-3000:]
    assert Tracker(sqlite_uri(work)).client.get_run(parent_id).info.status == "KILLED"
    resumed = cxrlt(*args, "--resume", cwd=work)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "best trial" in resumed.stdout
    return Study(work, folder, pd.read_csv(folder / "results.csv"), parent_id, before)


def test_the_resumed_study_finishes_every_trial_once(study):
    table = study.table
    assert len(table) == 4 and (table["status"] == "DONE").all()
    assert study.trials_before_kill <= set(table["trial_id"]), "the resumed study must continue the killed trials"
    assert {p.name for p in (study.dir / "trials").iterdir() if p.is_dir()} == set(table["trial_id"])
    for trial_id, epochs in zip(table["trial_id"], table["epochs"]):
        history = tune_trial.trainer_history(study.dir / "trials" / trial_id)
        assert [h["epoch"] for h in history] == list(range(1, epochs + 1))


def test_asha_stops_the_trials_that_cannot_learn(study):
    table = study.table
    learning = table["optim.lr"] > 1e-3
    assert (table.loc[learning, "epochs"] == EPOCHS).all() and not table.loc[learning, "stopped_early"].any()
    assert table.loc[~learning, "stopped_early"].any()
    assert (table.loc[table["stopped_early"], "epochs"] < EPOCHS).all()
    assert table.loc[learning, "best_loss"].max() < table.loc[~learning, "best_loss"].min()


def test_mlflow_has_the_study_run_and_one_child_run_per_trial(study):
    client = study.tracker.client
    assert (study.dir / "mlflow_run_id").read_text().strip() == study.parent_id, "resume must reopen the study's run"
    parent = client.get_run(study.parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "tune"
    assert parent.data.metrics["trials"] == 4 and parent.data.metrics["stopped_early"] >= 1
    assert parent.data.params["tune.scheduler"] == "asha" and parent.data.params["best.optim.lr"] == "0.01"
    artifacts = {a.path for a in client.list_artifacts(study.parent_id)}
    assert {"results.csv", "objective.png", "best.toml", "tune.toml"} <= artifacts
    children = study.tracker.children(study.parent_id)
    assert {c.info.run_name for c in children} == set(study.table["trial_id"])
    epochs = study.table.set_index("trial_id")["epochs"]
    for trial_id in study.table["trial_id"]:
        run_id = (study.dir / "trials" / trial_id / "mlflow_run_id").read_text().strip()
        child = client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == study.parent_id
        assert float(child.data.params["optim.lr"]) in (1e-2, 1e-9)
        steps = {m.step for m in client.get_metric_history(run_id, "dev/loss")}
        assert len(steps) == epochs[trial_id]
        finished = epochs[trial_id] == EPOCHS
        assert child.info.status == ("FINISHED" if finished else "KILLED")
        assert (study.dir / "trials" / trial_id / "result.json").is_file() == finished


def test_the_best_config_trains(study, starter64):
    best = study.dir / "best.toml"
    cfg = load_config(TrainConfig, best)
    assert cfg.optim.lr == 0.01 and cfg.data.shards == starter64 and not cfg.run.parent_run_id
    out = study.work / "best-run"
    trained = cxrlt_forked("train", best, "--set", "schedule.epochs=1", "--set", f"run.out_dir={out}", cwd=study.work)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["best_epoch"] == 1


def test_a_trial_reports_the_epochs_tune_missed_from_the_trainer_checkpoints(study, monkeypatch, tmp_path):
    """What a torchrun trial (and a restored one) reports: each checkpointed epoch once, after the
    epoch of Tune's checkpoint marker."""
    run_dir = study.dir / "trials" / study.table["trial_id"][0]
    marker = tmp_path / "checkpoint"
    marker.mkdir()
    (marker / tune_trial.MARKER).write_text(json.dumps({"run_dir": str(run_dir), "epoch": 1}))
    reports = []
    monkeypatch.setattr(tune_trial.tune, "get_checkpoint", lambda: tune_trial.tune.Checkpoint.from_directory(marker))
    monkeypatch.setattr(tune_trial.tune, "report", lambda metrics, checkpoint: reports.append(metrics))
    reporter = tune_trial.Reporter(run_dir)
    reporter.catch_up()
    reporter.catch_up()
    assert [r["epoch"] for r in reports] == [2]
    assert reports[0]["loss"] == study.table["last_loss"][0] and "step" not in reports[0]
