"""The step each kind of job runs, as bash lines: training on many nodes, tune on Ray, predict, and any
other `cxrlt` command as one task (preemptible when it checkpoints and resumes, as `synth train` does).

Arguments are either literal values (shell-quoted here) or `Sh` expressions written verbatim, such as
"${CX[@]}" or "$SLURM_JOB_ID".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cluster.config import SlurmConfig
from cluster.script import Script, preemption, q, run_preemptible


class Sh(str):
    """A shell expression, written into the script as is."""


Word = str | Path | int | Sh


def line(*words: Word) -> str:
    return " ".join(w if isinstance(w, Sh) else q(w) for w in words)


def sets(overrides: Sequence[Word]) -> list[Word]:
    return [w for o in overrides for w in ("--set", o)]


CX = Sh('"${CX[@]}"')
RESUME = Sh('"${RESUME[@]}"')
NNODES = Sh('"$SLURM_JOB_NUM_NODES"')


def train(script: Script, cfg: SlurmConfig, args: Sequence[Word], run_dir: Word, log_dir: Path) -> Script:
    """One srun task per node runs `cxrlt train ARGS` (ARGS without --nproc), which starts torchrun with
    a c10d rendezvous on the allocation's first host; torchrun writes each rank's output under the job's
    log folder."""
    port = cfg.rdzv_port if cfg.rdzv_port is not None else "$((20000 + SLURM_JOB_ID % 20000))"
    preemption(script, line(run_dir))
    script.add(
        "",
        "# rendezvous on the first host of the allocation",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        f"PORT={port}",
        f'export PET_LOG_DIR={q(log_dir)}/ranks-"$SLURM_JOB_ID" PET_TEE=3  # torchrun: per-rank log files',
        "",
    )
    step = line(
        "srun",
        Sh(f"--nodes={NNODES}"),
        "--ntasks-per-node=1",
        "--open-mode=append",
        Sh(f"--output={q(log_dir)}/%x-%j-node%t.out"),
        CX,
        "train",
        *args,
        "--nnodes",
        NNODES,
        "--nproc",
        cfg.ranks,
        "--rdzv-endpoint",
        Sh('"$HEAD:$PORT"'),
        "--rdzv-id",
        Sh('"$SLURM_JOB_ID"'),
        RESUME,
    )
    return run_preemptible(script, step)


def task(script: Script, args: Sequence[Word], run_dir: Word | None = None) -> Script:
    """`cxrlt ARGS` as one srun task. With `run_dir` (where the stop request goes) the command is
    preemptible: it checkpoints on the request, is requeued, and the next attempt adds --resume."""
    if run_dir is None:
        return script.add("", line("srun", "--ntasks=1", CX, *args))
    preemption(script, line(run_dir))
    return run_preemptible(script, line("srun", "--ntasks=1", CX, *args, RESUME))


def predict(script: Script, cfg: SlurmConfig, args: Sequence[Word]) -> Script:
    """`cxrlt predict ARGS` as one task; its ranks (--nproc) are those of one node."""
    nproc: list[Word] = [] if "--nproc" in args else ["--nproc", cfg.ranks]
    return task(script, ["predict", *args, *nproc])


# The first Ray with token authentication (RAY_AUTH_MODE=token); an older one ignores the variable.
RAY_TOKEN_AUTH_SINCE = "2.52.0"


def tune(script: Script, cfg: SlurmConfig, args: Sequence[Word], run_dir: Word) -> Script:
    """A Ray head on the first node, one Ray worker per other node, then `cxrlt tune ARGS` on the head.

    Ray runs whatever code a client sends it, and its GCS and raylets listen on every interface of the
    node whatever --node-ip-address says, so the cluster is closed with Ray's token authentication: a
    fresh random token per job, exported to every srun task (and the tune driver) through the
    environment, never written to the script, a file or a log. Each node advertises its own address
    from the allocation's host list; the dashboard is off and its remaining process bound to loopback.
    """
    cpus = '"${SLURM_CPUS_PER_TASK:-1}"'
    resources = f"--num-cpus={cpus} --num-gpus={cfg.gpus_per_node} --block"
    hardening = "--include-dashboard=false --dashboard-host=127.0.0.1 --disable-usage-stats"
    since = RAY_TOKEN_AUTH_SINCE
    preemption(script, line(run_dir))
    script.add(
        "",
        "# a Ray cluster across the allocation, closed by a per-job token; cxrlt tune connects through",
        "# RAY_ADDRESS and authenticates with the token it inherits",
        "RAY_VERSION=$(\"${PREFIX[@]}\" ray --version | awk '{print $NF}')",
        f'if [ "$(printf \'%s\\n\' {since} "$RAY_VERSION" | sort -V | head -n1)" != {since} ]; then',
        f'  echo "cxrlt: Ray $RAY_VERSION has no token authentication (needs {since}+);'
        ' not starting an open Ray cluster" >&2',
        "  exit 1",
        "fi",
        "export RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n')",
        "export RAY_AUTH_TOKEN",
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        "node_ip() { getent ahostsv4 \"$1\" | awk 'NR == 1 {print $1}'; }",
        'HEAD_IP=$(node_ip "${NODES[0]}")',
        f'export RAY_ADDRESS="$HEAD_IP:{cfg.ray_port}"',
        'srun --nodes=1 --ntasks=1 -w "${NODES[0]}" "${PREFIX[@]}" ray start --head --node-ip-address="$HEAD_IP"'
        f" --port={cfg.ray_port} {hardening} {resources} &",
        "for _ in $(seq 120); do",
        '  "${PREFIX[@]}" ray status --address "$RAY_ADDRESS" >/dev/null 2>&1 && break',
        "  sleep 1",
        "done",
        'for node in "${NODES[@]:1}"; do',
        '  srun --nodes=1 --ntasks=1 -w "$node" "${PREFIX[@]}" ray start --address="$RAY_ADDRESS"'
        f' --node-ip-address="$(node_ip "$node")" --disable-usage-stats {resources} &',
        "done",
        "",
    )
    return run_preemptible(script, line(CX, "tune", *args, RESUME))
