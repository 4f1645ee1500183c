"""The `[slurm]` section of a command's TOML: resources, environment set-up, preemption.

`cxrlt slurm KIND CONFIG` reads only the `[slurm]` table of CONFIG; every other table belongs to the
command the job runs. `--set slurm.x=v` overrides apply here, all other `--set`s are passed through to
the command in the job script.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrlt.config import OVERRIDE_ORIGIN, ConfigError, apply_overrides, from_dict, read_toml

SECTION = "slurm"


@dataclass
class SlurmConfig:
    job_name: str | None = None  # default: cxrlt-KIND
    nodes: int = 1
    gpus_per_node: int = 0  # 0: a CPU job (gloo, DS_ACCELERATOR=cpu); > 0: NCCL, one rank per GPU
    ranks_per_node: int = 1  # ranks per node of a CPU job (GPU jobs run one per GPU)
    cpus_per_node: int | None = None  # CPUs of the one task per node (--cpus-per-task)
    mem: str | None = None  # e.g. "64G"
    time: str | None = None  # e.g. "1-00:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: list[str] = field(default_factory=list)  # further #SBATCH options, e.g. ["--exclusive"]
    setup: list[str] = field(default_factory=list)  # shell lines run first, e.g. "module load cuda/12.4"
    venv: Path | None = None  # activated with VENV/bin/activate
    conda_env: str | None = None  # activated with `conda activate`
    container: str = ""  # prefix of every command, e.g. "apptainer exec --nv cxrlt.sif"
    executable: str = "cxrlt"
    env: dict[str, str] = field(default_factory=dict)  # exported before the step runs
    job_dir: Path = Path("slurm-jobs")  # one folder per submission: scripts, config snapshots, logs
    signal_seconds: int = 300  # SIGUSR1 this long before the time limit, to checkpoint and requeue
    requeue: bool = True
    rdzv_port: int | None = None  # default: 20000 + job id % 20000, so jobs sharing a host differ
    ray_port: int = 6379

    def __post_init__(self) -> None:
        for name in ("nodes", "ranks_per_node"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.gpus_per_node < 0:
            raise ValueError("gpus_per_node must be >= 0")
        if self.signal_seconds < 1:
            raise ValueError("signal_seconds must be >= 1")
        if self.venv is not None and self.conda_env is not None:
            raise ValueError("set venv or conda_env, not both")

    @property
    def ranks(self) -> int:
        """Ranks per node: one per GPU on GPU partitions, ranks_per_node on CPU ones."""
        return self.gpus_per_node or self.ranks_per_node


@dataclass
class _Document:
    """The part of a command's TOML that `cxrlt slurm` owns."""

    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass(frozen=True)
class LoadedConfig:
    slurm: SlurmConfig
    command_tables: dict[str, Any]  # everything but [slurm]: the command's own config
    passthrough: list[str]  # the --set overrides that belong to the command


def load_slurm_config(path: Path, overrides: Sequence[str] = ()) -> LoadedConfig:
    data = read_toml(path)
    ours = [o for o in overrides if o.split("=", 1)[0].strip().startswith(SECTION + ".")]
    theirs = [o for o in overrides if o not in ours]
    document = {SECTION: data.pop(SECTION, {})}
    if isinstance(document[SECTION], dict) and "pipeline" in document[SECTION]:
        raise ConfigError(
            f"{path}: [slurm.pipeline] is no longer read: describe the pipeline in a [pipeline] "
            "table (see configs/demo.toml); `cxrlt slurm pipeline` submits its steps"
        )
    overridden = apply_overrides(_Document, document, ours)
    section = document[SECTION]
    if isinstance(section, dict) and isinstance(section.get("time"), datetime.time):
        # TOML reads an unquoted `time = 04:00:00` (or `--set slurm.time=04:00:00`) as a local time.
        section["time"] = section["time"].isoformat()
    loaded = from_dict(_Document, document, origin=lambda key: OVERRIDE_ORIGIN if key in overridden else str(path))
    return LoadedConfig(loaded.slurm, data, theirs)
