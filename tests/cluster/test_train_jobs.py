"""Training as real SLURM jobs on the embedded starter: two nodes x one rank through srun + torchrun
(c10d rendezvous on the first host), tracked in MLflow under the job id; and preemption, both ways a
job is stopped (SIGUSR1 before the time limit, an operator's `scontrol requeue`), resuming each time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow

from tests.cli import cxrlt
from tests.cluster.conftest import (
    ENDED,
    diagnosis,
    release_requeued,
    submitted_ids,
    tracking_store,
    train_toml,
    wait_ended,
    wait_until,
)
from tests.cluster.local_slurm import LocalSlurm


def submit(tmp_path: Path, text: str) -> tuple[str, Path]:
    (tmp_path / "train.toml").write_text(text)
    done = cxrlt("slurm", "train", "train.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.split("submission folder: ")[1].strip())
    return submitted_ids(done.stdout)["train"], folder


def test_two_node_training_job_logs_to_mlflow(slurm: LocalSlurm, starter_shards: Path, tmp_path: Path) -> None:
    uri = tracking_store(tmp_path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    job, folder = submit(tmp_path, train_toml(starter_shards, tmp_path / "run", uri, steps=3, slurm="nodes = 2"))
    [fields] = wait_ended(slurm, job, timeout=300)
    node_logs = sorted((folder / "logs").glob(f"cxrlt-train-{job}-node*.out"))
    assert fields["JobState"] == "COMPLETED", (fields, [p.read_text()[-3000:] for p in node_logs])
    assert fields["NumNodes"] == "2" and fields["NodeList"] == "cxrlt-n[1-2]"
    # One srun task per node, and torchrun's per-rank files: rank 0 on one node, rank 1 on the other.
    assert [p.name[-9:] for p in node_logs] == ["node0.out", "node1.out"]
    rank_logs = list((folder / "logs" / f"ranks-{job}").glob("*/attempt_0/0/stdout.log"))
    assert len(rank_logs) == 2
    assert "best.pt: best epoch 1" in "".join(p.read_text() for p in node_logs)
    assert (tmp_path / "run" / "best.pt").is_file()

    experiment = client.get_experiment_by_name("slurm-tests")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.slurm_job_id = '{job}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert any(key.startswith("dev/") for key in runs[0].data.metrics), runs[0].data.metrics

    status = cxrlt("slurm", "status", job, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["state"] == "COMPLETED" and report["dir"] == str(folder)
    assert [(t["step"], t["job_id"], t["exit_code"]) for t in report["tasks"]] == [("train", job, "0:0")]


def test_preempted_and_requeued_job_resumes_from_its_checkpoint(
    slurm: LocalSlurm, starter_shards: Path, tmp_path: Path
) -> None:
    # Enough steps that the run cannot end between a checkpoint being seen and the stop being served,
    # few enough to stay quick; a checkpoint every 2 steps gives the test something to wait for.
    steps = 40
    run_dir = tmp_path / "run"
    latest = run_dir / "checkpoints" / "latest"
    text = train_toml(starter_shards, run_dir, tracking_store(tmp_path), steps, "", every_steps=2)
    job, folder = submit(tmp_path, text)
    log, node_log = (folder / "logs" / f"cxrlt-train-{job}{part}.out" for part in ("", "-node0"))

    def checkpointed_beyond(step: str):
        return lambda fs: fs[0]["JobState"] == "RUNNING" and latest.is_file() and latest.read_text().strip() > step

    def wait(predicate, what: str) -> list[dict[str, str]]:
        try:
            return wait_until(slurm, job, predicate, 240, what)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{diagnosis(slurm, log, node_log)}") from None

    # 1. SLURM's warning signal before the time limit: the trap asks for a stop, the trainer saves and
    #    exits 75, the script requeues its own job.
    wait(checkpointed_beyond(""), "a first checkpoint")
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    release_requeued(slurm, job, restarts=1)
    assert "checkpointed for preemption; requeueing job " + job in log.read_text(), diagnosis(slurm, log, node_log)
    first = latest.read_text().strip()

    # 2. An operator's `scontrol requeue` of the running job: SIGTERM to every process of the job, the
    #    trainer checkpoints, the job goes back to the queue.
    wait(checkpointed_beyond(first), "a checkpoint after the first resume")
    slurm.run("scontrol", "requeue", job)
    release_requeued(slurm, job, restarts=2)

    [fields] = wait(lambda fs: fs[0]["JobState"] in ENDED, "the end")
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "2", diagnosis(slurm, log, node_log)
    # Each requeued attempt ran with --resume and continued from its checkpoint; only the first started
    # the epoch at step 0.
    resumed = re.findall(r"resuming \S+ from (step-\d+) \(epoch 1, micro-step (\d+)\)", node_log.read_text())
    assert len(resumed) == 2 and resumed[0][0] == first, diagnosis(slurm, log, node_log)
    assert 0 < int(resumed[0][1]) < int(resumed[1][1]) < steps, resumed
    assert node_log.read_text().count(f" 0/{steps} [") == 1
    result = json.loads((run_dir / "result.json").read_text())
    assert result["best_epoch"] == 1 and Path(result["best_model"]) == run_dir / "best.pt", result
    assert (run_dir / "best.pt").is_file() and "loss" in result["dev_metrics"], result
