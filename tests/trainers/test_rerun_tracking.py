"""Issue #16: a rerun after a crash with a fixed config gets a new MLflow run (linked to the old one);
a resume with the same config continues the same run. Real SQLite MLflow store."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cxrlt.config import flatten
from cxrlt.tracking import PREVIOUS_RUN_TAG, Tracker, sqlite_uri
from trainers.config import RunConfig, TrainConfig
from trainers.stages import MLFLOW_RUN_FILE, _open_run, _remember_run


def _attempt(tracker, cfg, folder, fail: bool) -> str:
    """What `member` in run_training does with MLflow: open, remember, log the config, train."""
    params = flatten(cfg)
    with _open_run(tracker, cfg, folder, "member", None, {"stage": "image"}, params) as run:
        _remember_run(folder, run)
        run.log_params(params)
        if fail:
            raise RuntimeError("crashed in rank 0")
    return run.run_id


def test_a_rerun_with_a_fixed_config_starts_a_linked_run_and_a_resume_continues_it(tmp_path):
    tracker = Tracker(sqlite_uri(tmp_path))
    folder = tmp_path / "run"
    crashed = TrainConfig(run=RunConfig(out_dir=folder))
    crashed = replace(crashed, optim=replace(crashed.optim, lr=10.0))
    with pytest.raises(RuntimeError):
        _attempt(tracker, crashed, folder, fail=True)
    first = (folder / MLFLOW_RUN_FILE).read_text().strip()
    assert tracker.client.get_run(first).info.status == "FAILED"

    fixed = replace(crashed, optim=replace(crashed.optim, lr=3e-4))
    with pytest.raises(RuntimeError):  # the fixed config runs (no "Changing param values"), then is killed again
        _attempt(tracker, fixed, folder, fail=True)
    second = (folder / MLFLOW_RUN_FILE).read_text().strip()
    assert second != first
    run = tracker.client.get_run(second)
    assert run.data.tags[PREVIOUS_RUN_TAG] == first and run.data.params["optim.lr"] == "0.0003"
    assert tracker.client.get_run(first).data.params["optim.lr"] == "10.0"  # the old run's record is kept

    # Resuming with the same config continues the same run (one run, one metric history).
    assert _attempt(tracker, fixed, folder, fail=False) == second
    assert tracker.client.get_run(second).info.status == "FINISHED"


def test_a_recorded_run_missing_from_the_store_starts_a_new_one(tmp_path):
    tracker = Tracker(sqlite_uri(tmp_path))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MLFLOW_RUN_FILE).write_text("0123456789abcdef0123456789abcdef\n")
    run_id = _attempt(tracker, TrainConfig(run=RunConfig(out_dir=folder)), folder, fail=False)
    assert run_id != "0123456789abcdef0123456789abcdef"
    assert tracker.client.get_run(run_id).data.tags[PREVIOUS_RUN_TAG] == "0123456789abcdef0123456789abcdef"


def test_tracker_without_params_still_reopens(tmp_path):
    tracker = Tracker(sqlite_uri(tmp_path))
    with tracker.run("e", "r") as run:
        run.log_params({"a": 1})
    with tracker.run("e", "r", resume_run_id=run.run_id, params={"a": 1, "b": 2}) as again:
        again.log_params({"a": 1, "b": 2})
    assert again.run_id == run.run_id
