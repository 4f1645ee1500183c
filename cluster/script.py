"""The parts every cxrlt sbatch script shares: #SBATCH header, environment set-up, preemption handling.

A script is plain bash. Values from the config are shell-quoted; `$VAR` expressions are only ever
written by this package. The preemption part implements cxrlt/requeue.py's protocol on the job side:
SLURM signals the batch shell (`--signal=B:USR1@T`), the trap writes the stop-request file into the run
directory, the step checkpoints and exits REQUEUE_EXIT_CODE, and the script requeues its own job; the
requeued attempt (SLURM_RESTART_COUNT > 0) runs the same step with `--resume`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config import SlurmConfig
from cxrlt.requeue import REQUEUE_EXIT_CODE, STOP_REQUEST_NAME

SHEBANG = "#!/bin/bash"


@dataclass(frozen=True)
class Resources:
    """What one job of a submission asks for (a pipeline's steps differ from its [slurm] defaults)."""

    nodes: int
    gpus_per_node: int
    array: str | None = None  # e.g. "0-3%2"
    preemptible: bool = False


@dataclass
class Script:
    lines: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> Script:
        self.lines.extend(lines)
        return self

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def q(value: object) -> str:
    return shlex.quote(str(value))


def header(cfg: SlurmConfig, res: Resources, job_name: str, log_dir: Path, workdir: Path, note: str) -> Script:
    """The shebang and #SBATCH lines: one task per node (torchrun or Ray starts the ranks under it)."""
    log = log_dir / ("%x-%A_%a.out" if res.array else "%x-%j.out")
    opts = [
        f"--job-name={job_name}",
        f"--nodes={res.nodes}",
        "--ntasks-per-node=1",
        f"--chdir={workdir}",
        f"--output={log}",
        "--open-mode=append",
    ]
    if res.gpus_per_node:
        opts.append(f"--gpus-per-node={res.gpus_per_node}")
    named = {
        "cpus-per-task": cfg.cpus_per_node,
        "mem": cfg.mem,
        "time": cfg.time,
        "partition": cfg.partition,
        "account": cfg.account,
        "qos": cfg.qos,
        "constraint": cfg.constraint,
        "array": res.array,
    }
    opts += [f"--{name}={value}" for name, value in named.items() if value is not None]
    if res.preemptible and cfg.requeue:
        opts += [f"--signal=B:USR1@{cfg.signal_seconds}", "--requeue"]
    opts += cfg.extra
    return Script([SHEBANG, *(f"#SBATCH {q(o)}" for o in opts), f"# {note}", "set -euo pipefail"])


def environment(script: Script, cfg: SlurmConfig, gpu: bool) -> Script:
    """Module loads, venv/conda, exported variables and the command prefix array CX."""
    script.add("", "# environment")
    script.add(*cfg.setup)
    if cfg.venv is not None:
        script.add("# shellcheck source=/dev/null", f"source {q(cfg.venv / 'bin' / 'activate')}")
    if cfg.conda_env is not None:
        script.add('eval "$(conda shell.bash hook)"', f"conda activate {q(cfg.conda_env)}")
    env = {"HF_HUB_OFFLINE": "1"}
    if gpu:
        # Fail a collective that hangs (a lost rank) instead of waiting forever on the other ranks.
        env |= {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_ASYNC_ERROR_HANDLING": "1"}
    else:
        env |= {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env |= cfg.env
    script.add(*(f"export {name}={q(value)}" for name, value in env.items()))
    # Every step runs "${CX[@]}" ARGS (the container prefix, then cxrlt); Ray runs "${PREFIX[@]}" ray.
    script.add(f"PREFIX=({' '.join(q(w) for w in shlex.split(cfg.container))})")
    script.add(f'CX=("${{PREFIX[@]}}" {q(cfg.executable)})')
    return script


def preemption(script: Script, run_dir: str) -> Script:
    """Trap USR1 into the stop-request file; define run_step and RESUME (see the module docstring).

    `run_dir` is a shell expression (already quoted) naming the step's run directory.
    """
    stop = f'"$RUN_DIR"/{STOP_REQUEST_NAME}'
    script.add(
        "",
        "# preemption: SLURM signals this shell only; the step learns of it through the stop-request file",
        f"RUN_DIR={run_dir}",
        'mkdir -p "$RUN_DIR"',
        "INTERRUPTED=0",
        "# shellcheck disable=SC2317  # run by the trap",
        "request_stop() {",
        "  INTERRUPTED=1",
        f"  printf 'SIGUSR1 from SLURM, job %s\\n' \"$SLURM_JOB_ID\" > {stop}.tmp",
        f"  mv -f {stop}.tmp {stop}",
        "}",
        "trap request_stop USR1",
        "# The step runs in the background: bash runs a trap only between commands, and `wait` is one.",
        "run_step() {",
        '  "$@" &',
        "  local pid=$! status",
        "  while :; do",
        "    INTERRUPTED=0",
        "    status=0",
        '    wait "$pid" || status=$?',
        '    [ "$INTERRUPTED" = 1 ] || return "$status"',
        "  done",
        "}",
        "RESUME=()",
        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then RESUME=(--resume); fi',
    )
    return script


def run_preemptible(script: Script, step: str) -> Script:
    """Run `step` (a command line) through run_step; requeue on REQUEUE_EXIT_CODE, else pass its status."""
    script.add(
        "status=0",
        f"run_step {step} || status=$?",
        f'if [ "$status" -eq {REQUEUE_EXIT_CODE} ]; then',
        '  echo "cxrlt: checkpointed for preemption; requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        'exit "$status"',
    )
    return script
