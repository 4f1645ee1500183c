"""Training as real SLURM jobs on the embedded starter: two nodes x one rank through srun + torchrun
(c10d rendezvous on the first host), tracked in MLflow under the job id; and preemption, both ways a
job is stopped (SIGUSR1 before the time limit, an operator's `scontrol requeue`), resuming each time.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from tests.cli import cxrlt
from tests.cluster.conftest import release_requeued, submitted_ids, train_toml, wait_ended, wait_until
from tests.cluster.local_slurm import LocalSlurm


def submit(tmp_path: Path, text: str) -> tuple[str, Path]:
    (tmp_path / "train.toml").write_text(text)
    done = cxrlt("slurm", "train", "train.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.split("submission folder: ")[1].strip())
    return submitted_ids(done.stdout)["train"], folder


def test_two_node_training_job_logs_to_mlflow(slurm: LocalSlurm, starter_shards: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    # The store exists before the job, as a cluster's MLflow server does (see the report: a fresh SQLite
    # store was once migrated by two ranks of this job at once).
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.search_experiments()
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


def test_preempted_and_requeued_job_resumes_from_its_checkpoint(slurm: LocalSlurm, starter_shards: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    steps = 60
    run_dir = tmp_path / "run"
    latest = run_dir / "checkpoints" / "latest"
    text = train_toml(starter_shards, run_dir, f"sqlite:///{tmp_path / 'mlruns.db'}", steps, "", every_steps=4)
    job, folder = submit(tmp_path, text)
    log = folder / "logs" / f"cxrlt-train-{job}.out"

    def checkpointed_beyond(step: str):
        return lambda fs: fs[0]["JobState"] == "RUNNING" and latest.is_file() and latest.read_text().strip() > step

    # 1. SLURM's warning signal before the time limit: the trap asks for a stop, the trainer saves and
    #    exits 75, the script requeues its own job.
    wait_until(slurm, job, checkpointed_beyond(""), 240, "a first checkpoint")
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    release_requeued(slurm, job, restarts=1)
    assert "checkpointed for preemption; requeueing job " + job in log.read_text()
    first = latest.read_text().strip()

    # 2. An operator's requeue of the running job: SIGTERM to every process, the job goes back to the queue.
    wait_until(slurm, job, checkpointed_beyond(first), 240, "a checkpoint after the first resume")
    slurm.run("scontrol", "requeue", job)
    release_requeued(slurm, job, restarts=2)

    [fields] = wait_ended(slurm, job, timeout=240)
    node_log = (folder / "logs" / f"cxrlt-train-{job}-node0.out").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "2", (fields, node_log[-3000:])
    # Only the first attempt started the epoch at step 0; the others continued from their checkpoints
    # (without --resume the trainer refuses a run folder that has checkpoints).
    assert node_log.count(f" 0/{steps} [") == 1, node_log[-3000:]
    assert (run_dir / "best.pt").is_file() and json.loads((run_dir / "result.json").read_text())
