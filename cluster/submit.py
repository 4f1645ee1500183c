"""Submitting a plan with sbatch, in order, each job after the jobs it depends on (afterok), and the
submission record (`submission.json` in the submission folder) that `cxrlt slurm status` reads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cluster.plan import Plan
from cxrlt.atomic import write_text_atomic
from cxrlt.errors import InputError

RECORD_NAME = "submission.json"


@dataclass
class StepRecord:
    name: str
    job_id: str
    script: str
    depends_on: list[str] = field(default_factory=list)  # the job ids this one waits for

    def __post_init__(self) -> None:
        if isinstance(self.depends_on, str) or self.depends_on is None:  # a record from one dependency per job
            self.depends_on = [self.depends_on] if self.depends_on else []


@dataclass
class SubmissionRecord:
    kind: str
    dir: str
    created_at: str
    steps: list[StepRecord] = field(default_factory=list)
    parent_run_id: str | None = None  # a pipeline's parent MLflow run

    def save(self) -> Path:
        return write_text_atomic(Path(self.dir) / RECORD_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SubmissionRecord:
        try:
            data = json.loads(path.read_text())
            return cls(**{**data, "steps": [StepRecord(**s) for s in data["steps"]]})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a readable submission record ({e})") from None


def sbatch_line(script: Path, dependencies: Sequence[str] = ()) -> list[str]:
    """`--dependency=afterok:ID[:ID...]`: the job starts once every one of them has ended successfully."""
    after = [f"--dependency=afterok:{':'.join(dependencies)}"] if dependencies else []
    return ["sbatch", "--parsable", *after, str(script)]


def sbatch(script: Path, dependencies: Sequence[str] = ()) -> str:
    """Submit `script`; returns the job id. A refusal (bad partition, account, ...) is an InputError."""
    done = subprocess.run(sbatch_line(script, dependencies), capture_output=True, text=True)
    if done.returncode != 0:
        raise InputError(f"sbatch {script} failed: {done.stderr.strip() or done.stdout.strip()}")
    # --parsable prints "ID" or "ID;CLUSTER".
    return done.stdout.strip().split(";")[0]


def write_plan(plan: Plan) -> None:
    for path, text in plan.files.items():
        write_text_atomic(path, text)
    for job in plan.jobs:
        write_text_atomic(job.path, job.script)
    (plan.dir / "logs").mkdir(parents=True, exist_ok=True)


def submit(plan: Plan) -> SubmissionRecord:
    """Create a pipeline's parent MLflow run, write the plan's files and submit its jobs in order; the
    record is saved after every submission, so a chain that fails half-way still shows what was queued."""
    if shutil.which("sbatch") is None:  # before the parent run is created
        raise InputError("sbatch not found: run on a SLURM login node, or use --dry-run to see the script")
    parent_run_id = plan.parent.create() if plan.parent is not None else None
    if parent_run_id is not None:
        plan = plan.with_parent(parent_run_id)
    write_plan(plan)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    record = SubmissionRecord(plan.kind, str(plan.dir), created, parent_run_id=parent_run_id)
    ids: dict[str, str] = {}
    for job in plan.jobs:
        dependencies = [ids[name] for name in job.after]
        ids[job.name] = sbatch(job.path, dependencies)
        record.steps.append(StepRecord(job.name, ids[job.name], str(job.path), dependencies))
        record.save()
    return record


def dry_run_commands(plan: Plan) -> list[str]:
    """The sbatch command lines that would submit the plan (dependencies shown as placeholders)."""
    return [" ".join(sbatch_line(job.path, [f"<{name} job id>" for name in job.after])) for job in plan.jobs]
