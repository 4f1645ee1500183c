"""What one `cxrlt slurm KIND` call submits: the submission folder, config snapshots and job scripts.

A submission folder (`[slurm] job_dir`/KIND-TIME-XXXX) holds a snapshot of the command's config without
its [slurm] table (so editing the TOML later cannot change a queued job, and the command's strict
loader never sees a table it does not own), the job scripts, the logs and the submission record.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from cluster import steps
from cluster.config import SECTION, LoadedConfig, PipelineConfig, SlurmConfig, load_slurm_config
from cluster.script import Resources, Script, environment, header
from cxrlt.config import ConfigError

KINDS = ("train", "predict", "tune", "synth", "ensemble", "pipeline")
RUN_DIR_KEY = "run.out_dir"


@dataclass(frozen=True)
class PlannedJob:
    name: str  # step name, unique in the plan
    path: Path  # where the script is written
    script: str
    depends_on: str | None = None  # an earlier step that must end successfully first (afterok)


@dataclass(frozen=True)
class Plan:
    kind: str
    dir: Path
    jobs: list[PlannedJob]
    files: dict[Path, str]  # config snapshots, written before the jobs are submitted


def make_plan(kind: str, config: Path, overrides: Sequence[str], args: Sequence[str], workdir: Path) -> Plan:
    """Render everything `kind` submits; `args` follow `--` on the command line and go to the command."""
    loaded = load_slurm_config(config, overrides)
    cfg = loaded.slurm
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = (workdir / cfg.job_dir / f"{kind}-{stamp}-{uuid.uuid4().hex[:4]}").resolve()
    builder = _Builder(kind, cfg, folder, workdir.resolve(), f"`cxrlt slurm {kind} {config}`")
    if kind == "pipeline":
        return builder.pipeline(config)
    if kind == "predict":
        if loaded.command_tables or loaded.passthrough:
            raise ConfigError(f"{config}: predict takes no config: give only [slurm] and the arguments after --")
        return builder.single("predict", lambda s: steps.predict(s, cfg, args))
    snapshot = folder / "config.toml" if loaded.command_tables else None
    if snapshot is not None:
        builder.files[snapshot] = tomli_w.dumps(loaded.command_tables)
    if kind == "ensemble":
        if not args:
            raise ConfigError("cxrlt slurm ensemble: give the ensemble action after --, e.g. -- build ...")
        config_args = ["--config", snapshot] if snapshot is not None else []
        return builder.single("ensemble", lambda s: steps.ensemble(s, [*args, *config_args, *_sets(loaded)]))
    if snapshot is None:
        raise ConfigError(f"{config}: cxrlt slurm {kind} needs the command's config beside [slurm]")
    run_dir, passthrough = _run_dir(loaded, folder, workdir)
    if kind == "train":
        return builder.single("train", lambda s: steps.train(s, cfg, snapshot, passthrough, run_dir, builder.logs),
                              nodes=cfg.nodes, preemptible=True)  # fmt: skip
    if kind == "tune":
        return builder.single("tune", lambda s: steps.tune(s, cfg, snapshot, passthrough, run_dir),
                              nodes=cfg.nodes, preemptible=True)  # fmt: skip
    if kind == "synth":
        if len(args) != 1 or args[0] not in ("train", "sample"):
            raise ConfigError("cxrlt slurm synth: give the action after --: `-- train` or `-- sample`")
        return builder.single("synth", lambda s: steps.synth(s, cfg, args[0], snapshot, passthrough, run_dir),
                              preemptible=args[0] == "train")  # fmt: skip
    raise ConfigError(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")


def _sets(loaded: LoadedConfig) -> list[str]:
    return [w for o in loaded.passthrough for w in ("--set", o)]


def _run_dir(loaded: LoadedConfig, folder: Path, workdir: Path) -> tuple[Path, list[str]]:
    """The step's run directory (where the stop request goes): `run.out_dir` of the command's config
    or of a `--set`; when neither gives it, the submission folder's run/ is set through `--set`."""
    passthrough = list(loaded.passthrough)
    given = loaded.command_tables.get("run", {}).get("out_dir")
    for o in passthrough:
        key, _, value = o.partition("=")
        if key.strip() == RUN_DIR_KEY:
            given = _toml_value(value)
    if given is None:
        given = folder / "run"
        passthrough.append(f"{RUN_DIR_KEY}={given}")
    return workdir / Path(given), passthrough


def _toml_value(raw: str) -> Any:
    """An override's value as cxrlt.config.apply_overrides reads it: TOML, else the raw string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


class _Builder:
    def __init__(self, kind: str, cfg: SlurmConfig, folder: Path, workdir: Path, origin: str) -> None:
        self.kind, self.cfg, self.folder, self.workdir, self.origin = kind, cfg, folder, workdir, origin
        self.logs = folder / "logs"
        self.files: dict[Path, str] = {}
        self.jobs: list[PlannedJob] = []

    def _script(self, name: str, res: Resources, cfg: SlurmConfig | None = None) -> Script:
        cfg = cfg or self.cfg
        job_name = cfg.job_name or f"cxrlt-{self.kind}"
        if self.kind == "pipeline":
            job_name = f"{job_name}-{name}"
        note = f"Written by {self.origin}; submission folder {self.folder}"
        script = header(cfg, res, job_name, self.logs, self.workdir, note)
        return environment(script, cfg, gpu=res.gpus_per_node > 0)

    def add(self, name: str, script: Script, depends_on: str | None = None) -> None:
        self.jobs.append(PlannedJob(name, self.folder / f"{name}.sbatch", script.text(), depends_on))

    def plan(self) -> Plan:
        return Plan(self.kind, self.folder, self.jobs, self.files)

    def single(self, name: str, body, nodes: int = 1, preemptible: bool = False) -> Plan:
        if nodes == 1 and self.cfg.nodes > 1:
            raise ConfigError(f"slurm.nodes = {self.cfg.nodes}: cxrlt slurm {self.kind} runs on one node")
        res = Resources(nodes=nodes, gpus_per_node=self.cfg.gpus_per_node, preemptible=preemptible)
        self.add(name, body(self._script(name, res)))
        return self.plan()

    def pipeline(self, config: Path) -> Plan:
        p = self.cfg.pipeline
        if p is None:
            raise ConfigError(f"{config}: cxrlt slurm pipeline needs a [slurm.pipeline] table")
        p = _absolute(p, self.workdir)
        members, predictions = self.folder / "members", self.folder / "predictions"
        for i, member in enumerate(p.members):
            self.files[self.folder / "configs" / f"member-{i}.toml"] = _member_snapshot(member, i)
        last = len(p.members) - 1
        array = f"0-{last}" + (f"%{p.max_parallel}" if p.max_parallel else "")
        index = steps.Sh('"$SLURM_ARRAY_TASK_ID"')
        config_i = steps.Sh(f"{steps.q(self.folder / 'configs')}/member-{index}.toml")
        run_i = steps.Sh(f"{steps.q(members)}/{index}")
        gpus = self.cfg.gpus_per_node

        train = self._script("train", Resources(self.cfg.nodes, gpus, array, preemptible=True))
        # A member's run directory is only known inside the job, so the override is a shell expression.
        run_override = steps.Sh(steps.q(f"{RUN_DIR_KEY}={members}/") + index)
        self.add("train", steps.train(train, self.cfg, config_i, [run_override], run_i, self.logs))

        one_node = replace(self.cfg, nodes=1)
        predict = self._script("predict", Resources(1, gpus, array), one_node)
        self.add("predict", steps.chain_predict(predict, one_node, p, members, predictions), depends_on="train")

        cpu_only = replace(one_node, gpus_per_node=0)
        ensemble = self._script("ensemble", Resources(1, 0), cpu_only)
        dev = [predictions / p.dev_split / f"member-{i}.csv" for i in range(last + 1)]
        test = [predictions / p.test_split / f"member-{i}.csv" for i in range(last + 1)]
        out = self.folder / "ensemble"
        self.add("ensemble", steps.chain_ensemble(ensemble, p, dev, test, out, self.folder / "submission.zip"),
                 depends_on="predict")  # fmt: skip
        return self.plan()


def _absolute(p: PipelineConfig, workdir: Path) -> PipelineConfig:
    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else workdir / path

    return replace(p, members=[absolute(m) for m in p.members], shards=absolute(p.shards),
                   labels=absolute(p.labels), ids=absolute(p.ids),
                   ensemble_config=absolute(p.ensemble_config) if p.ensemble_config else None)  # fmt: skip


def _member_snapshot(member: Path, i: int) -> str:
    key = f"{SECTION}.pipeline.members[{i}]"
    try:
        with open(member, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{key}: config file not found: {member}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{key}: {member}: invalid TOML: {e}") from None
    data.pop(SECTION, None)
    return tomli_w.dumps(data)
