"""`cxrlt slurm KIND --dry-run`: the scripts for every kind are valid bash (and shellcheck-clean), carry
the [slurm] resources, environment and preemption protocol, and bad input fails naming the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import cxrlt
from tests.cluster.conftest import shell_check

GPU_TRAIN = """
[run]
out_dir = "runs/gpu"
[optim]
lr = 1e-3
[slurm]
nodes = 2
gpus_per_node = 4
cpus_per_node = 32
mem = "200G"
time = "1-00:00:00"
partition = "gpu"
account = "proj-1"
qos = "high"
constraint = "a100"
extra = ["--exclusive"]
setup = ["module load cuda/12.4", "module load nccl"]
venv = "/opt/venvs/cxrlt env"
container = "apptainer exec --nv /images/cxrlt.sif"
env = { NCCL_DEBUG = "WARN" }
signal_seconds = 600
"""

CPU_ONLY = """
[slurm]
ranks_per_node = 2
conda_env = "cxrlt"
"""


def scripts(stdout: str) -> list[str]:
    return ["#!/bin/bash" + part for part in stdout.split("#!/bin/bash")[1:]]


def sbatch_options(script: str) -> list[str]:
    return re.findall(r"^#SBATCH (\S+)$", script, flags=re.M)


def dry_run(tmp_path: Path, kind: str, config: str, *extra: str) -> list[str]:
    (tmp_path / "job.toml").write_text(config)
    done = cxrlt("slurm", kind, "job.toml", "--dry-run", *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "slurm-jobs").exists(), "a dry run must not write the submission folder"
    assert "would run: sbatch --parsable" in done.stderr
    return scripts(done.stdout)


CASES = {
    "train-gpu": ("train", GPU_TRAIN, ()),
    "train-cpu": ("train", "[run]\nout_dir = 'r'\n" + CPU_ONLY, ()),
    "tune": ("tune", GPU_TRAIN, ()),
    "synth-train": ("synth", "[synth]\nx = 1\n" + CPU_ONLY, ("--", "train")),
    "synth-sample": ("synth", "[synth]\nx = 1\n" + CPU_ONLY, ("--", "sample")),
    "predict": (
        "predict",
        CPU_ONLY,
        ("--", "runs/a/best.pt", "--shards", "shards", "--split", "test", "--out", "p.csv"),
    ),
    "ensemble": (
        "ensemble",
        "[search]\nx = 1\n" + CPU_ONLY,
        ("--", "build", "--predictions", "a.csv", "--labels", "l.csv", "--out", "ens"),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_every_kind_renders_valid_bash(case: str, tmp_path: Path, slurm_tools: None) -> None:
    kind, config, extra = CASES[case]
    [script] = dry_run(tmp_path, kind, config, *extra)
    shell_check(script, tmp_path)
    assert "--chdir=" + str(tmp_path.resolve()) in script
    assert "export HF_HUB_OFFLINE=1" in script


def test_gpu_training_script(tmp_path: Path, slurm_tools: None) -> None:
    [script] = dry_run(tmp_path, "train", GPU_TRAIN, "--set", "optim.lr=5e-4", "--set", "slurm.time=00:30:00")
    options = sbatch_options(script)
    for expected in (
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        "--cpus-per-task=32",
        "--mem=200G",
        "--time=00:30:00",
        "--partition=gpu",
        "--account=proj-1",
        "--qos=high",
        "--constraint=a100",
        "--exclusive",
        "--signal=B:USR1@600",
        "--requeue",
        "--open-mode=append",
    ):
        assert expected in options, (expected, options)
    assert "module load cuda/12.4\nmodule load nccl\n" in script
    assert "source '/opt/venvs/cxrlt env/bin/activate'" in script
    assert "PREFIX=(apptainer exec --nv /images/cxrlt.sif)" in script
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in script and "export NCCL_DEBUG=WARN" in script
    assert "DS_ACCELERATOR" not in script
    # slurm.* overrides configure the job; the others go to cxrlt train, with the rendezvous arguments.
    assert "--set optim.lr=5e-4" in script and "slurm.time" not in script
    assert '--nnodes "$SLURM_JOB_NUM_NODES" --nproc 4 --rdzv-endpoint "$HEAD:$PORT" --rdzv-id "$SLURM_JOB_ID"' in script
    assert 'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)' in script
    assert f"RUN_DIR={tmp_path.resolve()}/runs/gpu" in script
    # The config the job runs is a snapshot without [slurm]: the trainer's strict loader never sees it.
    assert re.search(r"train \S+/slurm-jobs/train-[\d-]+-\w{4}/config\.toml", script)


def test_cpu_training_script_and_default_run_dir(tmp_path: Path, slurm_tools: None) -> None:
    [script] = dry_run(tmp_path, "train", "[data]\nbatch_size = 4\n" + CPU_ONLY)
    assert "export DS_ACCELERATOR=cpu" in script and "export OMP_NUM_THREADS=1" in script
    assert "NCCL" not in script and "--gpus-per-node" not in script and "--nproc 2" in script
    assert 'eval "$(conda shell.bash hook)"\nconda activate cxrlt' in script
    # No run.out_dir given: the run lives in the submission folder, and the trainer is told so.
    run_dir = re.search(r"^RUN_DIR=(\S+)$", script, flags=re.M).group(1)
    assert run_dir.endswith("/run") and f"--set run.out_dir={run_dir}" in script


def test_tune_script_starts_ray_across_the_allocation(tmp_path: Path, slurm_tools: None) -> None:
    [script] = dry_run(tmp_path, "tune", GPU_TRAIN)
    assert 'ray start --head --node-ip-address="$HEAD_IP" --port=6379' in script
    assert 'for node in "${NODES[@]:1}"' in script and 'ray start --address="$RAY_ADDRESS"' in script
    assert "--num-gpus=4" in script
    assert re.search(
        r'run_step "\$\{CX\[@\]\}" tune \S+config\.toml --set optim\.lr=0\.001|run_step "\$\{CX\[@\]\}" tune', script
    )


BAD = {
    "unknown key": ("train", "[slurm]\nnodez = 2\n", (), "slurm.nodez"),
    "wrong type": ("train", "[run]\nx = 1\n[slurm]\n", ("--set", "slurm.nodes=two"), "slurm.nodes"),
    "bad value": ("train", "[run]\nx = 1\n[slurm]\nnodes = 0\n", (), "nodes must be >= 1"),
    "no pipeline": ("pipeline", "[slurm]\n", (), "missing required key 'pipeline'"),
    "old pipeline table": ("pipeline", "[slurm.pipeline]\nmembers = ['a.toml']\n", (), "[pipeline] table"),
    "predict config": ("predict", "[run]\nx = 1\n[slurm]\n", ("--", "m.pt"), "predict takes no config"),
    "synth action": ("synth", "[synth]\nx = 1\n", (), "-- train"),
    "one-node kind": ("predict", "[slurm]\nnodes = 2\n", ("--", "m.pt"), "slurm.nodes = 2"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_the_key(case: str, tmp_path: Path) -> None:
    kind, config, extra, expected = BAD[case]
    (tmp_path / "job.toml").write_text(config)
    done = cxrlt("slurm", kind, "job.toml", "--dry-run", *extra, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    done = cxrlt("slurm", "train", "nope.toml", cwd=tmp_path)
    assert done.returncode == 2 and "config file not found: nope.toml" in done.stderr


def test_status_without_submissions(tmp_path: Path) -> None:
    done = cxrlt("slurm", "status", cwd=tmp_path)
    assert done.returncode == 2 and "no submissions under slurm-jobs" in done.stderr


def test_tune_script_closes_the_ray_cluster_with_a_per_job_token(tmp_path: Path, slurm_tools: None) -> None:
    # Ray's GCS and raylets listen on every interface, so the token is what keeps the cluster network out.
    [script] = dry_run(tmp_path, "tune", GPU_TRAIN)
    head = re.search(r"^srun .* ray start --head .*$", script, flags=re.M).group(0)
    worker = re.search(r"^  srun .* ray start --address=.*$", script, flags=re.M).group(0)
    assert '--node-ip-address="$HEAD_IP"' in head and '--node-ip-address="$(node_ip "$node")"' in worker
    assert "--include-dashboard=false --dashboard-host=127.0.0.1" in head and "0.0.0.0" not in script
    assert script.index("export RAY_AUTH_TOKEN") < script.index("ray start --head")
    # The prologue as the job runs it, with the installed Ray: it passes the version check and exports
    # a fresh 256-bit token each time, one that appears nowhere in the script.
    lines = script.splitlines()
    start = next(i for i, text in enumerate(lines) if text.startswith("RAY_VERSION="))
    end = lines.index("export RAY_AUTH_TOKEN")
    prologue = "\n".join(
        ["set -euo pipefail", "PREFIX=()", *lines[start : end + 1], 'echo "$RAY_AUTH_MODE $RAY_AUTH_TOKEN"']
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    runs = [subprocess.run(["bash", "-c", prologue], capture_output=True, text=True, env=env) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    (mode, first), (_, second) = (r.stdout.split() for r in runs)
    assert mode == "token" and re.fullmatch(r"[0-9a-f]{64}", first) and first != second and first not in script
