"""Submitting a plan with sbatch, in order, each job after the one it depends on (afterok), and the
submission record (`submission.json` in the submission folder) that `cxrlt slurm status` reads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
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
    depends_on: str | None = None  # the job id this one waits for


@dataclass
class SubmissionRecord:
    kind: str
    dir: str
    created_at: str
    steps: list[StepRecord] = field(default_factory=list)

    def save(self) -> Path:
        return write_text_atomic(Path(self.dir) / RECORD_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SubmissionRecord:
        try:
            data = json.loads(path.read_text())
            return cls(**{**data, "steps": [StepRecord(**s) for s in data["steps"]]})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a readable submission record ({e})") from None


def sbatch_line(script: Path, dependency: str | None) -> list[str]:
    return ["sbatch", "--parsable", *([f"--dependency=afterok:{dependency}"] if dependency else []), str(script)]


def sbatch(script: Path, dependency: str | None = None) -> str:
    """Submit `script`; returns the job id. A refusal (bad partition, account, ...) is an InputError."""
    if shutil.which("sbatch") is None:
        raise InputError("sbatch not found: run on a SLURM login node, or use --dry-run to see the script")
    done = subprocess.run(sbatch_line(script, dependency), capture_output=True, text=True)
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
    """Write the plan's files and submit its jobs; the record is saved after every submission, so a
    chain that fails half-way still shows what was queued."""
    write_plan(plan)
    record = SubmissionRecord(plan.kind, str(plan.dir), datetime.now(timezone.utc).isoformat(timespec="seconds"))
    ids: dict[str, str] = {}
    for job in plan.jobs:
        dependency = ids[job.depends_on] if job.depends_on else None
        ids[job.name] = sbatch(job.path, dependency)
        record.steps.append(StepRecord(job.name, ids[job.name], str(job.path), dependency))
        record.save()
    return record


def dry_run_commands(plan: Plan) -> list[str]:
    """The sbatch command lines that would submit the plan (dependencies shown as placeholders)."""
    return [
        " ".join(sbatch_line(job.path, f"<{job.depends_on} job id>" if job.depends_on else None))
        for job in plan.jobs
    ]
