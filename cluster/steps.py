"""The step each kind of job runs, as bash lines: training on many nodes, predict, tune on Ray, synth,
ensemble, and the steps of the ensemble chain.

Arguments are either literal values (shell-quoted here) or `Sh` expressions written verbatim, such as
"$RUN_DIR" or a path ending in "$SLURM_ARRAY_TASK_ID".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cluster.config import PipelineConfig, SlurmConfig
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


def train(script: Script, cfg: SlurmConfig, config: Word, overrides: Sequence[Word], run_dir: Word,
          log_dir: Path) -> Script:  # fmt: skip
    """One srun task per node runs `cxrlt train`, which starts torchrun with a c10d rendezvous on the
    allocation's first host; torchrun writes each rank's output under the job's log folder."""
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
        "srun", Sh(f"--nodes={NNODES}"), "--ntasks-per-node=1", "--open-mode=append",
        Sh(f"--output={q(log_dir)}/%x-%j-node%t.out"),
        CX, "train", config, *sets(overrides),
        "--nnodes", NNODES, "--nproc", cfg.ranks, "--rdzv-endpoint", Sh('"$HEAD:$PORT"'),
        "--rdzv-id", Sh('"$SLURM_JOB_ID"'), RESUME,
    )  # fmt: skip
    return run_preemptible(script, step)


def predict(script: Script, cfg: SlurmConfig, args: Sequence[Word]) -> Script:
    """`cxrlt predict ARGS` as one task; its ranks (--nproc) are those of one node."""
    nproc = [] if "--nproc" in args else ["--nproc", cfg.ranks]
    return script.add("", line("srun", "--ntasks=1", CX, "predict", *args, *nproc))


def tune(script: Script, cfg: SlurmConfig, config: Word, overrides: Sequence[str], run_dir: Word) -> Script:
    """A Ray head on the first node, one Ray worker per other node, then `cxrlt tune` on the head."""
    cpus = '"${SLURM_CPUS_PER_TASK:-1}"'
    resources = f"--num-cpus={cpus} --num-gpus={cfg.gpus_per_node} --block"
    preemption(script, line(run_dir))
    script.add(
        "",
        "# a Ray cluster across the allocation; cxrlt tune connects through RAY_ADDRESS",
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'HEAD_IP=$(getent ahostsv4 "${NODES[0]}" | awk \'NR == 1 {print $1}\')',
        f'export RAY_ADDRESS="$HEAD_IP:{cfg.ray_port}"',
        'srun --nodes=1 --ntasks=1 -w "${NODES[0]}" "${PREFIX[@]}" ray start --head --node-ip-address="$HEAD_IP"'
        f" --port={cfg.ray_port} {resources} &",
        "for _ in $(seq 120); do",
        '  "${PREFIX[@]}" ray status --address "$RAY_ADDRESS" >/dev/null 2>&1 && break',
        "  sleep 1",
        "done",
        'for node in "${NODES[@]:1}"; do',
        '  srun --nodes=1 --ntasks=1 -w "$node" "${PREFIX[@]}" ray start --address="$RAY_ADDRESS"'
        f" {resources} &",
        "done",
        "",
    )
    return run_preemptible(script, line(CX, "tune", config, *sets(overrides), RESUME))


def synth(script: Script, cfg: SlurmConfig, action: str, config: Word, overrides: Sequence[str],
          run_dir: Word) -> Script:  # fmt: skip
    """`cxrlt synth train` is preemptible (checkpoint, requeue, --resume); `synth sample` is not."""
    if action != "train":
        return script.add("", line("srun", "--ntasks=1", CX, "synth", action, config, *sets(overrides)))
    preemption(script, line(run_dir))
    return run_preemptible(script, line("srun", "--ntasks=1", CX, "synth", action, config, *sets(overrides), RESUME))


def ensemble(script: Script, args: Sequence[Word]) -> Script:
    return script.add("", line(CX, "ensemble", *args))


def chain_predict(script: Script, cfg: SlurmConfig, p: PipelineConfig, members: Path, predictions: Path) -> Script:
    """Array task i predicts the dev and test splits with member i's checkpoint."""
    index = Sh('"$SLURM_ARRAY_TASK_ID"')
    checkpoint = Sh(f"{q(members)}/{index}/{q(p.checkpoint)}")
    for split in (p.dev_split, p.test_split):
        out = Sh(f"{q(predictions / split)}/member-{index}.csv")
        predict(script, cfg, ["--shards", p.shards, "--split", split, "--out", out, checkpoint, *p.predict_args])
    return script


def chain_ensemble(script: Script, p: PipelineConfig, dev: list[Path], test: list[Path], out: Path,
                   submission: Path) -> Script:  # fmt: skip
    """Search the combiner on the dev predictions, apply it to test, write the submission."""
    config = ["--config", p.ensemble_config] if p.ensemble_config is not None else []
    ensemble(script, ["build", "--predictions", *dev, "--labels", p.labels, *config, "--out", out])
    ensemble(script, ["apply", "--recipe", out / "recipe.json", "--predictions", *test, "--out", out / "test.csv"])
    return script.add(line(CX, "submit", "write", "--task", p.task, "--ids", p.ids, "--predictions",
                           out / "test.csv", "--out", submission))  # fmt: skip
