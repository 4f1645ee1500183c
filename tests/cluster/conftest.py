"""Fixtures for the SLURM tests: one real cluster for the session, job polling, a sharded starter set."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import mlflow
import pytest

from cluster.status import FIELD
from tests.cli import CXRLT, cxrlt
from tests.cluster import extensions
from tests.cluster.local_slurm import LocalSlurm, ensure_installed

POLL_S = 0.2
# Past the one-second resolution of slurmd's revoked-credential time, with a margin for clock reads.
CREDENTIAL_CLOCK_S = 2.0
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
VENV = CXRLT.parent.parent
SCHEMA = "cxr-lt-2024-task1"


@pytest.fixture(scope="session")
def slurm_tools() -> None:
    """slurm-wlm and munge (installed when missing), and shellcheck when apt can install it."""
    ensure_installed()


@pytest.fixture(scope="session")
def slurm(slurm_tools: None, request: pytest.FixtureRequest) -> Iterator[LocalSlurm]:
    # Not under pytest's 0700 tmp folders: munged wants every folder above its socket open to all.
    root = Path(tempfile.mkdtemp(prefix="cxrlt-slurm-"))
    root.chmod(0o755)
    cluster = LocalSlurm(root)
    # Jobs inherit this environment, TORCH_EXTENSIONS_DIR included.
    extensions.prepare(root / "torch_extensions", VENV)
    try:
        cluster.start()
        # cxrlt slurm and the jobs find the cluster the way users' shells do: SLURM_CONF.
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        os.environ.pop("SLURM_CONF", None)
        os.environ.pop("TORCH_EXTENSIONS_DIR", None)
        cluster.stop()
        # The daemons' logs are what explains a failed job: keep them when a test failed.
        if request.session.testsfailed:
            print(f"\ncluster state kept for diagnosis: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def job_fields(slurm: LocalSlurm, job_id: str) -> list[dict[str, str]]:
    out = slurm.run("scontrol", "show", "job", "-o", job_id).stdout
    return [dict(FIELD.findall(line)) for line in out.splitlines()]


def wait_until(slurm: LocalSlurm, job_id: str, predicate, timeout: float, what: str) -> list[dict[str, str]]:
    """Poll `scontrol show job` until predicate(fields of every task) holds (never sbatch --wait)."""
    deadline = time.monotonic() + timeout
    while True:
        fields = job_fields(slurm, job_id)
        if predicate(fields):
            return fields
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: {what} not reached in {timeout:.0f} s: {fields}")
        time.sleep(POLL_S)


def wait_ended(slurm: LocalSlurm, job_id: str, timeout: float) -> list[dict[str, str]]:
    return wait_until(slurm, job_id, lambda fs: fs and all(f["JobState"] in ENDED for f in fs), timeout, "the end")


def wait_all_ended(
    slurm: LocalSlurm, job_ids: Iterable[str], timeout: float, poll: float = 1.0
) -> dict[str, dict[str, str]]:
    """The fields of each job as it ended, polling every job with one `scontrol show job` (a chain of jobs
    shares the test machine's cores with the poller). A job's fields are kept from when it ended: the
    controller forgets it MinJobAge (300 s) later, before a long chain is over."""
    waiting, ended = set(job_ids), {}
    deadline = time.monotonic() + timeout
    while waiting:
        out = slurm.run("scontrol", "show", "job", "-o", check=False).stdout
        for fields in (dict(FIELD.findall(line)) for line in out.splitlines()):
            if fields.get("JobId") in waiting and fields.get("JobState") in ENDED:
                ended[fields["JobId"]] = fields
                waiting.discard(fields["JobId"])
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs {sorted(waiting)} not ended in {timeout:.0f} s")
        time.sleep(poll)
    return ended


def release_requeued(slurm: LocalSlurm, job_id: str, restarts: int, timeout: float = 60) -> None:
    """SLURM holds a requeued batch job for about two minutes (BeginTime) so that the previous attempt
    is cleaned up first; the tests start it as soon as that has happened instead. "Cleaned up" is
    stricter than the job showing PENDING: a self-requeued job is PENDING while its batch step may still
    be exiting, and a new attempt launched then can be refused by slurmd as a second copy of a running
    job (the attempt ends FAILED with a non-zero exit code and writes no output). Nor may the new attempt
    start in the same wall-clock second as the kill: slurmd revokes the old attempt's credential with a
    one-second timestamp and refuses any credential of that job issued up to it ("Job credential
    revoked", the attempt ends FAILED) -- so the release waits for the next second to begin."""
    wait_until(
        slurm,
        job_id,
        lambda fs: fs[0].get("Restarts") == str(restarts) and fs[0]["JobState"] == "PENDING",
        timeout,
        f"requeue #{restarts}",
    )
    deadline = time.monotonic() + timeout
    while slurm.steps_alive(job_id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: the previous attempt's steps still run after {timeout:.0f} s")
        time.sleep(POLL_S)
    time.sleep(CREDENTIAL_CLOCK_S)
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def diagnosis(slurm: LocalSlurm, *logs: Path, chars: int = 3000) -> str:
    """The tails of the controller's, the nodes' and the job's logs, for an assertion message."""
    files = [slurm.root / "slurmctld.log", *sorted(slurm.root.glob("slurmd-*.log")), *logs]
    return "\n".join(f"==> {p} <==\n{p.read_text(errors='replace')[-chars:]}" for p in files if p.is_file())


def submitted_ids(stdout: str) -> dict[str, str]:
    """`cxrlt slurm` prints `submitted STEP as job ID` per job (pipeline steps: train-convnext, ...)."""
    return dict(re.findall(r"submitted ([\w-]+) as job (\d+)", stdout))


def submission_folder(stdout: str) -> Path:
    """`cxrlt slurm` prints `submission folder: DIR` last."""
    return Path(stdout.split("submission folder: ")[1].strip())


def shell_check(script: str, where: Path) -> None:
    """bash -n always; shellcheck when it is installed (the cluster fixture installs it when it can)."""
    path = where / "script.sh"
    path.write_text(script)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


@pytest.fixture(scope="session")
def starter_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded starter harmonised to CXR-LT 2024 task 1 (classes NIH never annotated are unknown),
    shared by every job test: training needs no more, and the ensemble chain writes a task-1 submission."""
    out = tmp_path_factory.mktemp("starter") / "shards"
    done = cxrlt("shard", "starter", "--out", out, "--schema", SCHEMA, "--max-size", "64", "--workers", "1")
    assert done.returncode == 0, done.stderr
    return out


def tracking_store(folder: Path) -> str:
    """A SQLite MLflow store created before any job uses it, as a cluster's MLflow server exists before
    its jobs: ranks or array members that find no store all migrate a new one at once, and all but
    one fail ("table ... already exists")."""
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def train_toml(shards: Path, out_dir: Path, tracking_uri: str, steps: int, slurm: str, every_steps: int = 0) -> str:
    """A training config small enough for 2 CPU cores (32 px convnext_atto), with its [slurm] table."""
    return f"""
[run]
out_dir = "{out_dir}"
tracking_uri = "{tracking_uri}"
experiment = "slurm-tests"
[data]
shards = "{shards}"
batch_size = 8
eval_batch_size = 64
steps_per_epoch = {steps}
[data.transform]
size = 32
[model.backbone]
name = "convnext_atto"
img_size = 32
[schedule]
epochs = 1
[checkpoint]
every_steps = {every_steps}
[slurm]
venv = "{VENV}"
{slurm}
"""
