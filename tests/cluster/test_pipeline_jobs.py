"""`cxrlt slurm pipeline` on a real SLURM: configs/demo.toml cut down to its spine (no tune, no synth; two
one-epoch members at 64 px) submitted as one job per step with afterok dependencies. Every job
completes, the chain writes a report and a submission the validator accepts, and MLflow nests the
steps' runs under the pipeline's parent run. `pytest -s` prints the chain: step, job, seconds.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import mlflow

from cxrlt.pipeline import load_pipeline, make_plan
from tests.cli import cxrlt
from tests.cluster.conftest import SCHEMA, VENV, diagnosis, submission_folder, submitted_ids, wait_all_ended
from tests.cluster.local_slurm import LocalSlurm

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "cxrlt-slurm-pipeline"


def pipeline_toml(out: Path, job_dir: Path) -> str:
    """configs/demo.toml at CI size, with a [slurm] table for the test cluster (one CPU rank per job)."""
    return f"""
[pipeline]
out_dir = "{out}"
name = "slurm-pipeline"
experiment = "{EXPERIMENT}"
tta = "hflip"

[pipeline.shard]
source = "starter"
args = ["--max-size", "64", "--split", "0.7,0.15,0.15", "--schema", "{SCHEMA}"]

[pipeline.train]
config = "{ROOT / "configs" / "demo-member.toml"}"
set = ["schedule.epochs=1", "data.steps_per_epoch=3"]

[[pipeline.members]]
name = "convnext"
resolutions = [64]
set = ["model.backbone.name=convnext_atto"]

[[pipeline.members]]
name = "vit"
resolutions = [64]
set = ["model.backbone.name=vit_tiny_patch16_224"]

[pipeline.ensemble]
set = ["search.samples=2", "folds=3"]

[slurm]
venv = "{VENV}"
job_dir = "{job_dir}"
"""


def _time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value or "")
    except ValueError:  # "Unknown", "None": a job cancelled before it started
        return None


def chain_lines(jobs: dict[str, str], ended: dict[str, dict[str, str]], wall_s: float) -> list[str]:
    """Per step: job id, state, start (seconds after the first submission) and elapsed seconds, from
    `scontrol show job` (the test cluster has no accounting for sacct); then the chain's total."""
    fields = {step: ended.get(job, {}) for step, job in jobs.items()}
    submitted = min(filter(None, (_time(f.get("SubmitTime")) for f in fields.values())), default=None)
    lines = []
    for step, job in jobs.items():
        start, end = _time(fields[step].get("StartTime")), _time(fields[step].get("EndTime"))
        at = f"+{(start - submitted).total_seconds():.0f}s" if start and submitted else "-"
        took = f"{(end - start).total_seconds():.0f}s" if start and end else "-"
        lines.append(f"{step:28} job {job:>5} {fields[step].get('JobState', '?'):10} start {at:>6} took {took:>5}")
    last = max(filter(None, (_time(f.get("EndTime")) for f in fields.values())), default=None)
    chain = f"{(last - submitted).total_seconds():.0f}s" if last and submitted else "-"
    lines.append(f"chain: {len(jobs)} jobs, first submission to last end {chain}; submit + wait {wall_s:.0f}s")
    return lines


def test_pipeline_runs_as_one_job_per_step(slurm: LocalSlurm, tmp_path: Path) -> None:
    out = tmp_path / "pipeline"
    config = tmp_path / "pipeline.toml"
    config.write_text(pipeline_toml(out, tmp_path / "slurm-jobs"))
    started = time.monotonic()
    done = cxrlt("slurm", "pipeline", config, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs, folder = submitted_ids(done.stdout), submission_folder(done.stdout)
    plan = make_plan(load_pipeline(config))
    assert list(jobs) == [s.name for s in plan] and len(plan) == 13, done.stdout

    # `cxrlt slurm status JOB` finds the submission of any of its jobs and lists every step.
    status = cxrlt("slurm", "status", jobs["report-t1"], "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert [(t["step"], t["job_id"]) for t in json.loads(status.stdout)["tasks"]] == list(jobs.items())

    def logs() -> list[Path]:
        return sorted((folder / "logs").glob("*.out"))

    try:
        ended = wait_all_ended(slurm, jobs.values(), timeout=900)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{diagnosis(slurm, *logs())}") from None
    chain = "\n".join(chain_lines(jobs, ended, time.monotonic() - started))
    print(f"\n{chain}")
    why = f"{chain}\n{diagnosis(slurm, *logs())}"
    assert all(ended[job]["JobState"] == "COMPLETED" for job in jobs.values()), why

    submission = out / "submissions" / "t1.zip"
    assert (out / "report" / "t1" / "index.html").is_file() and submission.is_file(), why
    ids = out / "labels" / "test.csv"
    validated = cxrlt("submit", "validate", "--task", "t1", "--ids", ids, submission)
    assert validated.returncode == 0, validated.stdout + validated.stderr

    # One parent run, created at submission; the members' training runs and the ensemble search under it.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    [parent] = client.search_runs([experiment], "tags.`cxrlt.kind` = 'pipeline'")
    assert parent.data.tags["slurm_submission"] == str(folder)
    assert f"MLflow parent run: {parent.info.run_id}" in done.stdout
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = {c.data.tags.get("mlflow.runName", "") for c in children}
    assert {"convnext", "vit"} <= names and any(n.startswith("ensemble-") for n in names), (names, why)
    # ... each tagged with the job that trained it.
    trained = {c.data.tags["mlflow.runName"]: c.data.tags.get("slurm_job_id") for c in children}
    assert (trained["convnext"], trained["vit"]) == (jobs["train-convnext"], jobs["train-vit"]), (trained, why)
