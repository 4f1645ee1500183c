"""Fixtures for the SLURM tests: one real cluster for the session, job polling, a sharded starter set."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.status import FIELD
from tests.cli import CXRLT, cxrlt
from tests.cluster.local_slurm import LocalSlurm, ensure_installed

POLL_S = 0.25
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
VENV = CXRLT.parent.parent


@pytest.fixture(scope="session")
def slurm_tools() -> None:
    """slurm-wlm and munge (installed when missing), and shellcheck when apt can install it."""
    ensure_installed()


@pytest.fixture(scope="session")
def slurm(slurm_tools: None) -> Iterator[LocalSlurm]:
    # Not under pytest's 0700 tmp folders: munged wants every folder above its socket open to all.
    root = Path(tempfile.mkdtemp(prefix="cxrlt-slurm-"))
    root.chmod(0o755)
    cluster = LocalSlurm(root)
    _private_torch_extensions(root / "torch_extensions")
    try:
        cluster.start()
        # cxrlt slurm and the jobs find the cluster the way users' shells do: SLURM_CONF.
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        os.environ.pop("SLURM_CONF", None)
        os.environ.pop("TORCH_EXTENSIONS_DIR", None)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _private_torch_extensions(folder: Path) -> None:
    """The jobs (which inherit this environment) JIT-load DeepSpeed's CPU comm op from `folder`, seeded
    with the user's built copy: a `lock` left in the shared cache by a killed build makes every later
    process wait for it forever, and the tests must not hang on what other runs left behind."""
    # With TORCH_EXTENSIONS_DIR set, torch drops its per-python/CUDA subfolder (py311_cu130, ...).
    for built in (Path.home() / ".cache" / "torch_extensions").glob(f"py{sys.version_info[0]}{sys.version_info[1]}_*"):
        shutil.copytree(built, folder, ignore=shutil.ignore_patterns("lock"), dirs_exist_ok=True)
    folder.mkdir(exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(folder)


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


def release_requeued(slurm: LocalSlurm, job_id: str, restarts: int, timeout: float = 60) -> None:
    """SLURM holds a requeued batch job for about two minutes (BeginTime) so its epilog can finish;
    the tests let it start at once instead of waiting that out."""
    wait_until(slurm, job_id, lambda fs: fs[0].get("Restarts") == str(restarts) and fs[0]["JobState"] == "PENDING",
               timeout, f"requeue #{restarts}")  # fmt: skip
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def submitted_ids(stdout: str) -> dict[str, str]:
    """`cxrlt slurm` prints `submitted STEP as job ID` per job."""
    return dict(re.findall(r"submitted (\w+) as job (\d+)", stdout))


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
    out = tmp_path_factory.mktemp("starter") / "shards"
    done = cxrlt("shard", "starter", "--out", out, "--max-size", "64", "--workers", "1")
    assert done.returncode == 0, done.stderr
    return out


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
