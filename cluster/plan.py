"""What one `cxrlt slurm KIND` call submits: the submission folder, config snapshots and job scripts.

A submission folder (`[slurm] job_dir`/KIND-TIME-XXXX) holds a snapshot of the command's config without
its [slurm] table (so editing the TOML later cannot change a queued job, and the command's strict
loader never sees a table it does not own), the job scripts, the logs and the submission record.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import tomli_w

from cluster import steps
from cluster.config import LoadedConfig, SlurmConfig, load_slurm_config
from cluster.script import Resources, Script, environment, header, q
from cxrlt.config import ConfigError
from cxrlt.pipeline import PipelineConfig, load_pipeline
from cxrlt.pipeline import make_plan as pipeline_steps
from cxrlt.tracking import PARENT_RUN_ENV, TRACKING_URI_ENV

KINDS = ("train", "predict", "tune", "synth", "ensemble", "pipeline")
RUN_DIR_KEY = "run.out_dir"


@dataclass(frozen=True)
class PlannedJob:
    name: str  # step name, unique in the plan
    path: Path  # where the script is written
    script: str
    after: tuple[str, ...] = ()  # earlier steps that must all end successfully first (afterok)


@dataclass(frozen=True)
class ParentRun:
    """A pipeline's parent MLflow run, created at submission; the jobs' runs nest under it by id."""

    uri: str
    experiment: str
    name: str
    tags: dict[str, str]
    store: Path | None = None  # the folder of a default SQLite store, created with the run

    def create(self) -> str:
        """Create the run and end it FINISHED at once (the jobs attach to it by id); returns its id."""
        from cxrlt.tracking import Tracker

        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
        with Tracker(self.uri).run(self.experiment, self.name, tags=self.tags) as run:
            if run.run_id is None:  # Tracker opens no run on a non-zero distributed rank
                raise RuntimeError("the pipeline's parent MLflow run was not created (not rank 0?)")
            return run.run_id


# Every pipeline job holds this line until submission puts the parent run's id in its place.
PARENT_PLACEHOLDER = f"# {PARENT_RUN_ENV}=<the pipeline's parent MLflow run, created at submission>"


def parent_line(run_id: str) -> str:
    return f"export {PARENT_RUN_ENV}={q(run_id)}  # the pipeline's parent MLflow run"


@dataclass(frozen=True)
class Plan:
    kind: str
    dir: Path
    jobs: list[PlannedJob]
    files: dict[Path, str]  # config snapshots, written before the jobs are submitted
    parent: ParentRun | None = None

    def with_parent(self, run_id: str) -> Plan:
        jobs = [replace(j, script=j.script.replace(PARENT_PLACEHOLDER, parent_line(run_id))) for j in self.jobs]
        return replace(self, jobs=jobs)


def make_plan(kind: str, config: Path, overrides: Sequence[str], args: Sequence[str], workdir: Path) -> Plan:
    """Render everything `kind` submits; `args` follow `--` on the command line and go to the command."""
    loaded = load_slurm_config(config, overrides)
    cfg = loaded.slurm
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = (workdir / cfg.job_dir / f"{kind}-{stamp}-{uuid.uuid4().hex[:4]}").resolve()
    builder = _Builder(kind, cfg, folder, workdir.resolve(), f"`cxrlt slurm {kind} {config}`")
    if kind == "pipeline":
        if args:
            raise ConfigError("cxrlt slurm pipeline takes no arguments after --: the [pipeline] table says it all")
        return builder.pipeline(config, loaded.passthrough)
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
        command: list[steps.Word] = ["ensemble", *args, *(("--config", snapshot) if snapshot is not None else ())]
        return builder.single("ensemble", lambda s: steps.task(s, [*command, *steps.sets(loaded.passthrough)]))
    if snapshot is None:
        raise ConfigError(f"{config}: cxrlt slurm {kind} needs the command's config beside [slurm]")
    run_dir, passthrough = _run_dir(loaded, folder, workdir)
    command = [snapshot, *steps.sets(passthrough)]
    if kind == "train":
        return builder.single(
            "train", lambda s: steps.train(s, cfg, command, run_dir, builder.logs), nodes=cfg.nodes, preemptible=True
        )
    if kind == "tune":
        return builder.single("tune", lambda s: steps.tune(s, cfg, command, run_dir), nodes=cfg.nodes, preemptible=True)
    if kind == "synth":
        if len(args) != 1 or args[0] not in ("train", "sample"):
            raise ConfigError("cxrlt slurm synth: give the action after --: `-- train` or `-- sample`")
        train = args[0] == "train"  # synth train checkpoints and resumes; sample does not
        body = partial(steps.task, args=["synth", args[0], *command], run_dir=run_dir if train else None)
        return builder.single("synth", body, preemptible=train)
    raise ConfigError(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")


def _override(overrides: Sequence[str], key: str, default: Any = None) -> Any:
    """The value the last `key=value` of `overrides` gives `key`, as cxrlt.config.apply_overrides reads it."""
    for o in overrides:
        name, _, value = o.partition("=")
        if name.strip() == key:
            default = _toml_value(value)
    return default


def _run_dir(loaded: LoadedConfig, folder: Path, workdir: Path) -> tuple[Path, list[str]]:
    """The step's run directory (where the stop request goes): `run.out_dir` of the command's config
    or of a `--set`; when neither gives it, the submission folder's run/ is set through `--set`."""
    passthrough = list(loaded.passthrough)
    given = _override(passthrough, RUN_DIR_KEY, loaded.command_tables.get("run", {}).get("out_dir"))
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


def _step_sets(argv: Sequence[str]) -> list[str]:
    """The KEY=VALUE of every `--set KEY=VALUE` in a command line."""
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--set"]


def _without_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` without `option VALUE` (the job sets that option itself)."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == option:
            skip = True
        else:
            out.append(word)
    return out


class _Builder:
    def __init__(self, kind: str, cfg: SlurmConfig, folder: Path, workdir: Path, origin: str) -> None:
        self.kind, self.cfg, self.folder, self.workdir, self.origin = kind, cfg, folder, workdir, origin
        self.logs = folder / "logs"
        self.files: dict[Path, str] = {}
        self.jobs: list[PlannedJob] = []
        self.parent: ParentRun | None = None

    def job(
        self,
        name: str,
        res: Resources,
        body: Callable[[Script], Script],
        cfg: SlurmConfig | None = None,
        after: Sequence[str] = (),
    ) -> None:
        """The one way a command becomes a job: #SBATCH header, environment, then `body`'s lines."""
        cfg = cfg or self.cfg
        job_name = cfg.job_name or f"cxrlt-{self.kind}"
        if self.kind == "pipeline":
            job_name = f"{job_name}-{name}"
        note = f"Written by {self.origin}; submission folder {self.folder}"
        script = environment(header(cfg, res, job_name, self.logs, self.workdir, note), cfg, gpu=res.gpus_per_node > 0)
        if self.parent is not None:
            script.add(PARENT_PLACEHOLDER)
        self.jobs.append(PlannedJob(name, self.folder / f"{name}.sbatch", body(script).text(), tuple(after)))

    def plan(self) -> Plan:
        return Plan(self.kind, self.folder, self.jobs, self.files, self.parent)

    def single(self, name: str, body: Callable[[Script], Script], nodes: int = 1, preemptible: bool = False) -> Plan:
        if nodes == 1 and self.cfg.nodes > 1:
            raise ConfigError(f"slurm.nodes = {self.cfg.nodes}: cxrlt slurm {self.kind} runs on one node")
        self.job(name, Resources(nodes=nodes, gpus_per_node=self.cfg.gpus_per_node, preemptible=preemptible), body)
        return self.plan()

    def pipeline(self, config: Path, overrides: Sequence[str]) -> Plan:
        """One job per step of the [pipeline] plan (cxrlt.pipeline.make_plan), after the jobs of its steps."""
        p = load_pipeline(config, overrides)
        # Absolute paths in every command line: the jobs do not depend on where they are started from.
        p = _with_configs(replace(p, out_dir=(self.workdir / p.out_dir).resolve()), self._frozen)
        store = None if p.tracking_uri else p.out_dir
        uri = p.tracking_uri or f"sqlite:///{p.out_dir / 'mlruns.db'}"  # as cxrlt.tracking.sqlite_uri(out_dir)
        tags = {"cxrlt.kind": "pipeline", "config": str(config), "slurm_submission": str(self.folder)}
        self.parent = ParentRun(uri, p.experiment, p.name or p.out_dir.name, tags, store)
        cfg = replace(self.cfg, env={**self.cfg.env, TRACKING_URI_ENV: uri})
        one_node = replace(cfg, nodes=1)
        cpu_only = replace(one_node, gpus_per_node=0)
        gpus = cfg.gpus_per_node
        for step in pipeline_steps(p):
            argv = list(step.argv)
            given = _override(_step_sets(argv), RUN_DIR_KEY) if step.resume else None
            if step.resume and given is None:
                raise ConfigError(f"pipeline step {step.name}: a resumable step needs --set {RUN_DIR_KEY}=DIR")
            # Where the stop request of a preemption goes.
            run_dir = self.workdir / Path(given) if given is not None else None
            if argv[0] == "train":
                body = partial(
                    steps.train,
                    cfg=cfg,
                    args=_without_option(argv[1:], "--nproc"),
                    run_dir=_resumable(step.name, run_dir),
                    log_dir=self.logs,
                )
                res, step_cfg = Resources(cfg.nodes, gpus, preemptible=True), cfg
            elif argv[0] == "tune":
                body = partial(steps.tune, cfg=cfg, args=argv[1:], run_dir=_resumable(step.name, run_dir))
                res, step_cfg = Resources(cfg.nodes, gpus, preemptible=True), cfg
            elif argv[0] == "predict":
                body = partial(steps.predict, cfg=one_node, args=argv[1:])
                res, step_cfg = Resources(1, gpus), one_node
            else:  # synth train (preemptible), synth sample and ensemble build (GPUs), the light rest (CPU)
                body = partial(steps.task, args=argv, run_dir=run_dir)
                step_cfg = one_node if step.heavy else cpu_only
                res = Resources(1, step_cfg.gpus_per_node, preemptible=step.resume)
            self.job(step.name, res, body, step_cfg, step.after)
        return self.plan()

    def _frozen(self, path: Path, role: str) -> Path:
        """A step's own config, made absolute and copied into the submission folder, so that editing it
        cannot change a queued job (a file that does not exist yet, such as the tuned best.toml, is not)."""
        if not (path := (self.workdir / path).resolve()).is_file():
            return path
        copy = self.folder / "configs" / f"{role}.toml"
        self.files[copy] = path.read_text()
        return copy


def _resumable(step: str, run_dir: Path | None) -> Path:
    """The run directory of a train / tune step, which cxrlt.pipeline always makes resumable."""
    if run_dir is None:
        raise RuntimeError(f"pipeline step {step}: a train or tune step must be resumable (have a run directory)")
    return run_dir


def _with_configs(p: PipelineConfig, change: Callable[[Path, str], Path]) -> PipelineConfig:
    """`p` with change(path, role) in place of each step's config path."""
    return replace(
        p,
        train=replace(p.train, config=change(p.train.config, "train")),
        tune=p.tune and replace(p.tune, config=change(p.tune.config, "tune")),
        synth=p.synth and replace(p.synth, config=change(p.synth.config, "synth")),
        weak_labels=p.weak_labels and replace(p.weak_labels, rules=change(p.weak_labels.rules, "weak-labels")),
        ensemble=replace(
            p.ensemble, config=None if p.ensemble.config is None else change(p.ensemble.config, "ensemble")
        ),
    )
