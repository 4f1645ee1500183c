"""What `cxrlt tune` runs: a Ray Tune study of training trials, tracked as one MLflow parent run.

The study folder (`run.out_dir`, shared between nodes on a cluster) holds Ray's experiment state
(`study/`), the trials' run folders (`trials/<trial id>/`), the parent run's id and the results. A
study that was killed resumes with `resume=True` through `Tuner.restore`: finished trials are kept,
interrupted ones continue from their trainer checkpoints, and the searcher carries on where it was.
A stop request in the study folder (SLURM preemption, cxrlt.requeue) saves the study's state and exits
REQUEUE_EXIT_CODE, so the requeued job's `--resume` continues it.
On a Ray cluster (RAY_ADDRESS set, as `cxrlt slurm tune` does) the trials spread over its nodes.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import tune

from cxrlt.config import flatten, from_dict, to_dict, write_config
from cxrlt.errors import InputError
from cxrlt.requeue import REQUEUE_EXIT_CODE, clear_stop_request, stop_requested
from cxrlt.tracking import Tracker
from trainers.config import TrainConfig
from trainers.stages import check_inputs, tracking_uri
from trainers.tune_config import LoadedTune, absolute_paths, load_tune_config
from trainers.tune_results import (
    BEST_CONFIG,
    OBJECTIVE_PNG,
    RESULTS_CSV,
    StudySummary,
    plot_objective,
    summarise,
    trials_table,
    write_table,
)
from trainers.tune_space import param_space, scheduler, search_algorithm
from trainers.tune_trial import TrialSpec, member_dir, run_trial

EXPERIMENT_DIR = "study"
PARENT_RUN_FILE = "mlflow_run_id"
SCHEDULER_STATE = "scheduler.pkl"
STOP_POLL_SECONDS = 2.0


def prepare(config: Path, overrides: Sequence[str]) -> LoadedTune:
    """Load the tune config, make its training paths absolute (trials run elsewhere) and check the
    base training inputs, so bad input fails before Ray starts."""
    loaded = load_tune_config(config, overrides)
    base = absolute_paths(from_dict(TrainConfig, loaded.train_data), Path.cwd())
    check_inputs(base)
    loaded = LoadedTune(replace(loaded.tune, run=absolute_paths(loaded.tune.run, Path.cwd())), to_dict(base))
    member_dir(loaded.trial_config({}))  # a trial is one member
    return loaded


def _trainable(spec: TrialSpec) -> Callable[..., Any]:
    """run_trial with `spec` bound and the trial's resources attached (Ray returns a function trainable)."""
    settings = spec.loaded.tune.tune
    return tune.with_resources(
        tune.with_parameters(run_trial, spec=spec), {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    )


def _tuner(spec: TrialSpec, epochs: int, resume: bool) -> tune.Tuner:
    cfg = spec.loaded.tune
    experiment = spec.study_dir / EXPERIMENT_DIR
    space = param_space(cfg.space, cfg.tune.searcher)
    if tune.Tuner.can_restore(experiment):
        if not resume:
            raise InputError(
                f"run.out_dir = {spec.study_dir} holds a study; "
                "pass --resume to continue it or choose another run.out_dir"
            )
        return tune.Tuner.restore(
            str(experiment), _trainable(spec), resume_unfinished=True, resume_errored=True, param_space=space
        )
    (spec.study_dir / SCHEDULER_STATE).unlink(missing_ok=True)  # a fresh study's scheduler starts empty
    return tune.Tuner(
        _trainable(spec),
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=cfg.tune.num_samples,
            search_alg=search_algorithm(cfg.tune),
            scheduler=scheduler(cfg.tune, epochs, spec.study_dir / SCHEDULER_STATE),
            max_concurrent_trials=cfg.tune.max_concurrent or None,
            # A fresh process per trial: a trial's process group and DeepSpeed state never leak into the next.
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_DIR,
            storage_path=str(spec.study_dir),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1,
        ),
    )


def _interrupt_on_stop_request(study_dir: Path, done: threading.Event) -> None:
    """Turn the stop-request file (a SLURM preemption, see cxrlt.requeue) into SIGUSR1 to this process,
    on which Tune saves the study's state and returns from fit() with its trials resumable."""
    while not done.wait(STOP_POLL_SECONDS):
        if stop_requested(study_dir):
            os.kill(os.getpid(), signal.SIGUSR1)
            return


def _fit(tuner: tune.Tuner, study_dir: Path) -> tune.ResultGrid:
    """tuner.fit(); SystemExit(REQUEUE_EXIT_CODE) when a stop request interrupted it."""
    done = threading.Event()
    watcher = threading.Thread(target=_interrupt_on_stop_request, args=(study_dir, done), daemon=True)
    watcher.start()
    try:
        grid = tuner.fit()
    finally:
        done.set()
    if stop_requested(study_dir):
        raise SystemExit(REQUEUE_EXIT_CODE)
    return grid


def run_study(config: Path, overrides: Sequence[str], resume: bool = False) -> StudySummary:
    loaded = prepare(config, overrides)
    cfg = loaded.tune
    base = loaded.trial_config({})
    study_dir = cfg.run.out_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    clear_stop_request(study_dir)  # served by the attempt it stopped
    uri = cfg.run.tracking_uri or tracking_uri(base)
    experiment = cfg.run.experiment or base.run.experiment
    run_id_file = study_dir / PARENT_RUN_FILE
    saved_run = run_id_file.read_text(encoding="utf-8").strip() if resume and run_id_file.is_file() else None
    tracker = Tracker(uri)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True)
    with tracker.run(
        experiment, cfg.run.name or study_dir.name, tags={"kind": "tune"}, resume_run_id=saved_run
    ) as parent:
        if parent.run_id is None:  # Tracker opens no run on a non-zero distributed rank; the driver is one process
            raise RuntimeError("the study's MLflow run was not created (not rank 0?)")
        run_id_file.write_text(f"{parent.run_id}\n", encoding="utf-8")
        write_config(cfg, study_dir / "tune.toml")
        parent.log_params({f"tune.{k}": v for k, v in flatten(cfg.tune).items()})
        parent.log_params({f"space.{k}": v for k, v in flatten(cfg.space).items()})
        parent.log_artifact(study_dir / "tune.toml")
        spec = TrialSpec(loaded, study_dir, parent.run_id, uri, experiment)
        grid = _fit(_tuner(spec, base.schedule.epochs, resume), study_dir)
        keys = list(cfg.space)
        direction = cfg.tune.direction
        table = trials_table(grid, keys, cfg.tune.metric, direction, cfg.tune.max_t or base.schedule.epochs)
        summary = summarise(table, keys, cfg.tune.metric, direction)
        write_table(table, study_dir / RESULTS_CSV)
        plot_objective(table, cfg.tune.metric, direction, study_dir / OBJECTIVE_PNG)
        best = loaded.trial_config(summary.best_values)
        write_config(replace(best, run=replace(best.run, out_dir=study_dir / "best")), study_dir / BEST_CONFIG)
        for name in (RESULTS_CSV, OBJECTIVE_PNG, BEST_CONFIG):
            parent.log_artifact(study_dir / name)
        parent.log_metrics(
            {
                f"best_{cfg.tune.metric}": summary.best_score,
                "trials": len(table),
                "stopped_early": int(table["stopped_early"].sum()),
            }
        )
        parent.set_tags({"best_trial": summary.best_trial})
        parent.log_params({f"best.{k}": v for k, v in summary.best_values.items()})
    return summary
