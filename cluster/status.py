"""`cxrlt slurm status`: the state of a submitted chain, from its record and `scontrol show job`.

Without accounting (slurmdbd) the controller is the only source of job state, and it forgets a job
MinJobAge seconds after it ends; such a job is reported as UNKNOWN rather than guessed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cluster.submit import RECORD_NAME, SubmissionRecord
from cxrlt.errors import InputError

FIELD = re.compile(r"(\w+)=(\S*)")
FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class TaskState:
    step: str
    job_id: str  # "12", or "12_3" for array task 3
    state: str
    reason: str = ""
    exit_code: str = ""
    restarts: str = ""
    nodes: str = ""


def find_record(job: str | None, jobs_dir: Path) -> SubmissionRecord:
    """The record of submission folder `job`, of the submission holding job id `job`, or the newest."""
    if job is not None and Path(job, RECORD_NAME).is_file():
        return SubmissionRecord.load(Path(job, RECORD_NAME))
    records = [SubmissionRecord.load(p) for p in sorted(jobs_dir.glob(f"*/{RECORD_NAME}"))]
    if job is None:
        if not records:
            raise InputError(f"no submissions under {jobs_dir} (give a job id or a submission folder)")
        return max(records, key=lambda r: r.created_at)
    base = job.split("_")[0]
    for record in records:
        if any(s.job_id == base for s in record.steps):
            return record
    # A job submitted some other way: report it alone.
    return SubmissionRecord("job", "", "", [])


def query(step: str, job_id: str) -> list[TaskState]:
    """One TaskState per job, or per array task (a pending array's tasks share one line)."""
    if shutil.which("scontrol") is None:
        raise InputError("scontrol not found: run on a SLURM login node")
    done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if done.returncode != 0:
        return [TaskState(step, job_id, UNKNOWN, "no longer known to slurmctld")]
    tasks = []
    for text in done.stdout.splitlines():
        f = dict(FIELD.findall(text))
        task = f.get("ArrayTaskId")
        shown = f"{f.get('ArrayJobId', job_id)}_{task}" if task else f.get("JobId", job_id)
        reason = "" if f.get("Reason") == "None" else f.get("Reason", "")
        nodes = "" if f.get("NodeList") == "(null)" else f.get("NodeList", "")
        tasks.append(
            TaskState(
                step, shown, f.get("JobState", UNKNOWN), reason, f.get("ExitCode", ""), f.get("Restarts", ""), nodes
            )
        )
    return tasks


def chain_state(tasks: list[TaskState]) -> str:
    states = {t.state for t in tasks}
    if states & FAILED:
        return "FAILED"
    if states == {"COMPLETED"}:
        return "COMPLETED"
    if UNKNOWN in states:
        return UNKNOWN
    return "RUNNING" if states & {"RUNNING", "COMPLETING", "COMPLETED"} else "PENDING"


def status(job: str | None, jobs_dir: Path) -> tuple[SubmissionRecord, list[TaskState]]:
    record = find_record(job, jobs_dir)
    if not record.steps:
        assert job is not None
        return record, query("job", job)
    return record, [t for s in record.steps for t in query(s.name, s.job_id)]
