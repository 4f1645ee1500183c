"""What `cxrlt train` runs: input checks, then the members of the configured stage, tracked in MLflow.

- image / study: one member, or one per entry of `resolutions` (`out_dir/res-<size>`);
- student: `student.iterations` rounds (`student-<k>`), each scoring pseudo-labels with its teacher
  (the first from `student.teacher`, then the previous round's best model) and training a student;
  the last round's best.pt is also the member's (`out_dir[/res-<size>]/best.pt`).
A member that finished (its `result.json` exists) is reused when its model was trained from the same
config (the training hash; a finished run of another config is refused), so rerunning a command after a
failure or a requeue redoes only what is missing. One MLflow run covers a single member; several members are
child runs of one parent. Every bad input is reported before the process group or any model exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxrlt.atomic import atomic_path
from cxrlt.config import config_hash, flatten, to_dict, write_config
from cxrlt.data.multisource import open_training_sets
from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.shardset import ShardIndex, index_path, read_index
from cxrlt.errors import InputError
from cxrlt.models.backbones import size_multiple
from cxrlt.models.saved import load_model
from cxrlt.requeue import clear_stop_request
from cxrlt.tracking import Run, Tracker, default_uri
from trainers import distributed
from trainers.config import TrainConfig
from trainers.inference import predict_split
from trainers.loop import PREEMPTED, EpochCallback, MemberResult, StopWatch, load_result, train_member
from trainers.pseudo import PseudoLabels, load_pseudo_labels, weak_label_overlay

MLFLOW_RUN_FILE = "mlflow_run_id"


def check_inputs(cfg: TrainConfig) -> ShardIndex:
    """The shard index, after checking everything a run needs; InputError naming the key otherwise."""
    if cfg.data.shards is None:
        raise InputError("data.shards is not set: give the shard folder written by `cxrlt shard`")
    if not index_path(cfg.data.shards).is_file():
        raise InputError(f"data.shards = {cfg.data.shards}: no shard set there (no _index.json)")
    index = read_index(cfg.data.shards)
    for key, split in (("data.train_split", cfg.data.train_split), ("data.dev_split", cfg.data.dev_split)):
        if not index.splits.get(split):
            raise InputError(f"{key} = {split!r}: {cfg.data.shards} has no samples in it (splits: {index.splits})")
    multiple = size_multiple(cfg.model.backbone.name)
    for size in cfg.resolutions or [cfg.data.transform.size]:
        if size < multiple or size % multiple:
            raise InputError(
                f"resolution {size}: backbone {cfg.model.backbone.name} takes multiples of {multiple} (>= {multiple})"
            )
    if cfg.data.transform.channels != cfg.model.backbone.in_chans:
        raise InputError(
            f"data.transform.channels = {cfg.data.transform.channels} but model.backbone.in_chans = "
            f"{cfg.model.backbone.in_chans}; they must agree"
        )
    if (cfg.stage.name == "study") != (cfg.model.kind == "study"):
        raise InputError(f"stage.name = {cfg.stage.name!r} needs model.kind = 'study' exactly when the stage is study")
    if (cfg.stage.name == "contrastive") != (cfg.model.kind == "contrastive"):
        raise InputError(
            f"stage.name = {cfg.stage.name!r} needs model.kind = 'contrastive' exactly when the stage is contrastive"
        )
    if cfg.stage.name == "contrastive" and not sum(int(s.get("with_report", 0)) for s in index.sources):
        raise InputError(
            f"stage.name = 'contrastive': {cfg.data.shards} holds no report text; shard a source with reports "
            "(cxrlt shard mimic-cxr-lt ... --reports <MIMIC-CXR reports>)"
        )
    if (cfg.data.sources or cfg.data.schema) and cfg.stage.name not in ("image", "study"):
        raise InputError(
            f"data.sources / data.schema: the {cfg.stage.name} stage reads data.shards alone, in its own classes "
            "(multi-source training is for the image and study stages)"
        )
    # Every source readable, non-empty and sharing classes with the run's schema (cxrlt.data.multisource).
    schema = open_training_sets(cfg.data.shards, cfg.data.train_split, cfg.data.sources, cfg.data.schema).schema
    unknown = [c for c in cfg.data.unknown_classes if c not in schema.classes]
    if unknown:
        raise InputError(f"data.unknown_classes: {unknown} are not classes of the run's schema {schema.name!r}")
    if cfg.data.weak_labels is not None:
        if cfg.stage.name == "contrastive":
            raise InputError("data.weak_labels: the contrastive stage has no class outputs to train on labels")
        # Readable, adding only new classes, with rows in the training split (trainers.pseudo).
        weak_label_overlay(cfg.data.weak_labels, schema.classes, cfg.level, cfg.data.train_split)
    for key, extra in (("data.synthetic", cfg.data.synthetic), ("student.unlabelled", cfg.student.unlabelled)):
        if extra is not None and not index_path(extra).is_file():
            raise InputError(f"{key} = {extra}: no shard set there (no _index.json)")
    if cfg.stage.name == "student":
        if cfg.student.teacher is None:
            raise InputError("stage.name = 'student' needs student.teacher (a trained-model file)")
        teacher = load_model(cfg.student.teacher)
        if teacher.classes != tuple(index.classes):
            raise InputError(f"student.teacher {cfg.student.teacher}: trained on other classes than {cfg.data.shards}")
        if teacher.kind != cfg.model.kind:
            raise InputError(f"student.teacher is a {teacher.kind} model; the student is a {cfg.model.kind} model")
    if cfg.stage.init_from is not None:
        load_model(cfg.stage.init_from)  # readable and of the right format; fit is checked when built
    return index


def members(cfg: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """(sub-folder, config) per member; a single member trains in out_dir itself ("")."""
    if not cfg.resolutions:
        return [("", cfg)]
    return [
        (
            f"res-{size}",
            replace(
                cfg,
                data=replace(cfg.data, transform=replace(cfg.data.transform, size=size)),
                model=replace(cfg.model, backbone=replace(cfg.model.backbone, img_size=size)),
                resolutions=[],
            ),
        )
        for size in cfg.resolutions
    ]


def training_hash(cfg: TrainConfig) -> str:
    """Fingerprint of what decides the weights (not where they are written or logged)."""
    # On the plain dict: "." is no valid out_dir for a config, but it is the neutral value the hash has always used.
    data = to_dict(cfg)
    data["run"].update(out_dir=".", tracking_uri="", parent_run_id="", name="")
    # Keys added after runs existed hash as before while they hold their defaults (None values never
    # reach the dict), so upgrading cxrlt never refuses to resume a run it would train the same way.
    for key, default in (("sources", []), ("schema", "")):
        if data["data"].get(key) == default:
            del data["data"][key]
    return config_hash(data)


def tracking_uri(cfg: TrainConfig) -> str:
    return cfg.run.tracking_uri or default_uri(Path.cwd())


def lineage_tags(cfg: TrainConfig, index_file: Path) -> dict[str, str]:
    tags = {
        "stage": cfg.stage.name,
        "shards": str(cfg.data.shards),
        "shard_index_sha256": hashlib.sha256(index_file.read_bytes()).hexdigest()[:16],
    }
    if cfg.data.sources:  # the extra training sets, each with its ratio and index fingerprint
        tags["sources"] = "; ".join(
            f"{s.shards} (ratio {s.ratio}, split {s.split}, index sha256 "
            f"{hashlib.sha256(index_path(s.shards).read_bytes()).hexdigest()[:16]})"
            for s in cfg.data.sources
        )
        tags["schema"] = cfg.data.schema or "primary"
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).resolve().parent
    )
    if commit.returncode == 0:
        tags["git_commit"] = commit.stdout.strip()
    if "SLURM_JOB_ID" in os.environ:
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return tags


def _run_id_file(folder: Path) -> Path:
    return folder / MLFLOW_RUN_FILE


def _open_run(
    tracker: Tracker,
    cfg: TrainConfig,
    folder: Path,
    name: str,
    parent: str | None,
    tags: dict,
    params: dict | None = None,
):
    """An MLflow run for `folder`, reopening the one a previous attempt started there, unless that run
    logged other `params` (a rerun after fixing the config): then a new run, tagged with the old one's id."""
    saved = _run_id_file(folder)
    resume_id = saved.read_text(encoding="utf-8").strip() if saved.is_file() else None
    return tracker.run(
        cfg.run.experiment, name, parent_run_id=parent, tags=tags, resume_run_id=resume_id, params=params
    )


def _remember_run(folder: Path, run: Run) -> None:
    if run.run_id is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _run_id_file(folder).write_text(run.run_id + "\n", encoding="utf-8")


def _teacher_labels(teacher_path: Path, cfg: TrainConfig, ctx: distributed.Context, out: Path) -> PseudoLabels:
    """Score the training split (and the unlabelled set) with the teacher; write, then load on every rank."""
    if not out.is_file():
        teacher = load_model(teacher_path)
        model = teacher.build(use_ema=True).to(ctx.device)
        transform = replace(
            cfg.data.transform, **{k: teacher.transform[k] for k in ("size", "channels", "mean", "std")}
        )
        ids, probs = [], []
        for shards in [cfg.data.shard_dir] + ([cfg.student.unlabelled] if cfg.student.unlabelled else []):
            reader = EvalReader(
                shards,
                ReaderConfig(
                    level=cfg.level,
                    split=cfg.data.train_split,
                    batch_size=cfg.data.eval_batch_size,
                    max_views=cfg.data.max_views,
                    transform=transform,
                ),
            )
            outputs = predict_split(model, make_loader(reader, cfg.data.num_workers), cfg.level, ctx.device)
            if outputs is not None:
                ids += outputs.ids
                probs.append(outputs.probs)
        del model
        if ctx.is_main:
            PseudoLabels(ids, np.concatenate(probs), teacher.classes, False, 0.5).save(out)
        distributed.barrier()
    index = read_index(cfg.data.shard_dir)
    return load_pseudo_labels(out, index.classes, cfg.student.hard, cfg.student.hard_threshold)


def run_training(
    cfg: TrainConfig, resume: bool = False, on_epoch_end: EpochCallback | None = None
) -> list[MemberResult]:
    """Check inputs, join the process group and train every member; returns their results."""
    index = check_inputs(cfg)
    out_dir = Path(cfg.run.out_dir)
    ctx = distributed.init(cfg.deepspeed.backend)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        clear_stop_request(out_dir)
        (out_dir / PREEMPTED).unlink(missing_ok=True)
        write_config(cfg, out_dir / "config.toml")
    distributed.barrier()
    stop = StopWatch(out_dir)
    tracker = Tracker(tracking_uri(cfg))
    tags = lineage_tags(cfg, index_path(cfg.data.shard_dir))
    plan = members(cfg)
    rounds = cfg.student.iterations if cfg.stage.name == "student" else 1
    several = len(plan) * rounds > 1
    name = cfg.run.name or out_dir.name
    parent = cfg.run.parent_run_id or None
    results: list[MemberResult] = []

    def member(
        member_cfg: TrainConfig, folder: Path, member_name: str, parent_id: str | None, pseudo=None
    ) -> MemberResult:
        done = load_result(folder)
        if done is not None:
            if not resume:
                raise FileExistsError(
                    f"{folder} holds a finished run; pass --resume to reuse it or choose another run.out_dir"
                )
            # Reuse only what this config would train: after a new tuned config a stale member must not stand in.
            found, expected = load_model(done.best_model).config_hash, training_hash(member_cfg)
            if found != expected:
                raise InputError(
                    f"{folder} holds a finished run of another training config (hash {found}; this config's is "
                    f"{expected}): remove the folder to train it again, or choose another run.out_dir"
                )
            return done
        if ctx.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            write_config(member_cfg, folder / "config.toml")
        params = flatten(member_cfg)
        with _open_run(tracker, member_cfg, folder, member_name, parent_id, tags, params) as run:
            _remember_run(folder, run)
            run.log_params(params)
            return train_member(
                member_cfg,
                folder,
                index,
                ctx,
                run,
                stop,
                training_hash(member_cfg),
                resume,
                pseudo=pseudo,
                on_epoch_end=on_epoch_end,
            )

    def stage(member_cfg: TrainConfig, folder: Path, member_name: str, parent_id: str | None) -> MemberResult:
        if cfg.stage.name != "student":
            return member(member_cfg, folder, member_name, parent_id)
        if cfg.student.teacher is None:  # check_inputs refuses a student stage without one
            raise InputError("stage.name = 'student' needs student.teacher (a trained-model file)")
        teacher = Path(cfg.student.teacher)
        result: MemberResult | None = None
        for k in range(1, rounds + 1):
            round_dir = folder / f"student-{k}"
            pseudo = _teacher_labels(teacher, member_cfg, ctx, round_dir / "pseudo_labels.npz")
            result = member(member_cfg, round_dir, f"{member_name}/student-{k}", parent_id, pseudo)
            teacher = result.best_model
        if result is None:  # StudentConfig makes iterations >= 1
            raise RuntimeError("student stage ran no round")
        # The member's model is its last round's, at the place every other stage writes it (FOLDER/best.pt).
        if ctx.is_main:
            with atomic_path(folder / result.best_model.name) as tmp:
                shutil.copyfile(result.best_model, tmp)
        distributed.barrier()
        return result

    if not several:
        folder = out_dir / plan[0][0]
        results.append(stage(plan[0][1], folder, name, parent))
    else:
        with _open_run(tracker, cfg, out_dir, name, parent, tags) as parent_run:
            _remember_run(out_dir, parent_run)
            for sub, member_cfg in plan:
                results.append(stage(member_cfg, out_dir / sub, f"{name}/{sub}" if sub else name, parent_run.run_id))
    return results
