"""`cxrlt train` end to end on the real embedded images with a real DeepSpeed engine (gloo, 2 ranks),
a real MLflow store, and real signals: ZeRO 0/2, requeue after SIGTERM, exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from cxrlt.models.saved import load_model
from cxrlt.requeue import REQUEUE_EXIT_CODE, STOP_REQUEST_NAME
from cxrlt.tracking import Tracker, sqlite_uri
from tests.cli import CXRLT, cxrlt
from tests.trainers.conftest import REFERENCE_OVERRIDES, train_args

pytestmark = pytest.mark.timeout(600)


def _mlflow_run(work: Path, run_dir: Path):
    tracker = Tracker(sqlite_uri(work))
    return tracker.client.get_run((run_dir / "mlflow_run_id").read_text().strip())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    saved = load_model(path)
    return {**saved.state_dict, **{f"ema.{k}": v for k, v in (saved.ema_state_dict or {}).items()}}


def _latest_step(run_dir: Path) -> int:
    pointer = run_dir / "checkpoints" / "latest"
    return int(pointer.read_text().strip().removeprefix("step-")) if pointer.is_file() else 0


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(CXRLT), *args],
        cwd=cwd,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_step(process: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _latest_step(run_dir) < step:
        assert process.poll() is None, f"training ended early:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def _wait_until_gone(out: Path, timeout: float = 30) -> None:
    """Wait until no process mentions `out` on its command line (orphaned workers would)."""
    deadline = time.monotonic() + timeout
    while any(str(out) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        assert time.monotonic() < deadline, f"processes training into {out} outlived their launcher"
        time.sleep(0.1)


def test_two_ranks_zero0_train_checkpoint_and_track_everything(trained):
    work = trained.parent
    result = json.loads((trained / "result.json").read_text())
    assert result["best_epoch"] in (1, 2) and 0 < result["dev_metrics"]["mAP"] <= 1
    saved = load_model(trained / "best.pt")
    assert saved.schema == "nih-14" and len(saved.classes) == 14 and saved.ema_state_dict is not None
    assert saved.transform["size"] == 64
    assert (trained / "checkpoints" / "latest").read_text().strip() == "step-00000016"
    kept = sorted(p.name for p in (trained / "checkpoints").glob("step-*"))
    assert kept == ["step-00000014", "step-00000016"]  # keep_last = 2
    assert {f"rng-{r}.pt" for r in (0, 1)} <= {p.name for p in (trained / "checkpoints" / kept[-1]).iterdir()}
    run = _mlflow_run(work, trained)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone.name"] == "convnext_atto" and run.data.params["deepspeed.zero_stage"] == "0"
    assert {"git_commit", "shard_index_sha256", "stage"} <= set(run.data.tags)
    client = Tracker(sqlite_uri(work)).client
    assert len(client.get_metric_history(run.info.run_id, "dev/mAP")) == 2
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 8  # every 2 of 16 steps
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"per_class.csv", "dev_predictions.csv", "history.png", "config.toml"} <= artifacts


def test_two_ranks_zero2_with_gradient_accumulation(starter64, tmp_path):
    out = tmp_path / "zero2"
    args = train_args(starter64, out, "deepspeed.zero_stage=2", "optim.grad_accum=2", "schedule.epochs=1")
    result = cxrlt(*args, "--nproc", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    step = out / "checkpoints" / "step-00000004"  # 8 micro-steps / 2 accumulated
    assert {p.name for p in step.glob("zero_pp_rank_*_optim_states.pt")} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    assert json.loads((step / "state.json").read_text())["global_step"] == 4


def test_sigterm_requeues_then_sigkill_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(
    starter64, trained, tmp_path
):
    """One run of the reference config stopped both ways (the checkpoints of the two are the same files):
    SIGTERM, as a job script's kill, checkpoints and exits for requeue; the requeued run is SIGKILLed
    mid-epoch; the last resume finishes the same MLflow run with the uninterrupted run's weights."""
    out = tmp_path / "preempted"
    args = train_args(starter64, out, *REFERENCE_OVERRIDES)
    process = _start([*args, "--nproc", "2"], tmp_path)
    _wait_for_step(process, out, 2)
    os.kill(process.pid, signal.SIGTERM)  # the `cxrlt train` parent only, as a job script's kill would
    output = process.communicate(timeout=240)[0]
    assert process.returncode == REQUEUE_EXIT_CODE, output[-3000:]
    assert (out / "PREEMPTED").is_file() and (out / STOP_REQUEST_NAME).is_file()
    stopped_at = _latest_step(out)
    assert 2 < stopped_at < 16
    run_id = (out / "mlflow_run_id").read_text()
    assert _mlflow_run(tmp_path, out).info.status == "KILLED"

    requeued = _start([*args, "--nproc", "2", "--resume"], tmp_path)
    _wait_for_step(requeued, out, stopped_at + 1)
    os.killpg(requeued.pid, signal.SIGKILL)  # the command and torchrun; the workers must follow
    requeued.wait()
    _wait_until_gone(out)
    assert stopped_at < _latest_step(out) < 16 and not (out / "result.json").exists()
    killed_at = _latest_step(out)
    resumed = cxrlt(*args, "--nproc", "2", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from step-{killed_at:08d}" in resumed.stderr
    expected, got = _weights(trained / "last.pt"), _weights(out / "last.pt")
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"

    assert (out / "mlflow_run_id").read_text() == run_id
    run = _mlflow_run(tmp_path, out)
    assert run.info.status == "FINISHED"
    history = Tracker(sqlite_uri(tmp_path)).client.get_metric_history(run.info.run_id, "dev/mAP")
    assert sorted(m.step for m in history) == [8, 16]
