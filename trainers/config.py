"""The `cxrlt train` config tree: one dataclass per TOML table, validated before any work starts.

A stage change (image -> study -> noisy student) or a resolution sweep is a config edit, never a code
edit. Paths are resolved relative to the working directory of the command, as a user types them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxrlt.data.multisource import UNION, Source, primary_share, valid_schema_choice
from cxrlt.data.transforms import TransformConfig
from cxrlt.errors import InputError
from cxrlt.labels import SCHEMAS
from cxrlt.models.backbones import size_multiple
from cxrlt.models.ema import EmaConfig
from cxrlt.models.factory import ModelConfig
from cxrlt.models.losses import LossConfig

STAGES = ("image", "study", "student", "contrastive")
METRICS = ("mAP", "mAUROC", "mF1", "group_average_mAP", "loss")
INIT_HEADS = ("all", "shared", "none")


def _finite(owner: object, *names: str) -> None:
    """Each named float field of `owner` is a finite number (nan and inf pass every comparison check)."""
    for name in names:
        value = getattr(owner, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(v is not None and not math.isfinite(v) for v in values):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def _at_least(owner: object, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


@dataclass
class RunConfig:
    """out_dir: this run's folder (checkpoints, models, metrics, predictions); one member per
    resolution goes into `out_dir/res-<size>`. tracking_uri: an MLflow URI; empty means the
    MLFLOW_TRACKING_URI environment variable, else SQLite `./mlruns.db` (artifacts `./mlartifacts`)."""

    out_dir: Path = Path("runs/train")
    name: str = ""
    experiment: str = "cxrlt"
    tracking_uri: str = ""
    parent_run_id: str = ""
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if str(self.out_dir).strip() in ("", "."):
            raise ValueError(f"out_dir must name the run's own folder, got {str(self.out_dir)!r}")
        if not self.experiment.strip():
            raise ValueError("experiment must be a non-empty name")
        _at_least(self, 0, "seed")
        _at_least(self, 1, "log_every")


@dataclass
class DataConfig:
    """batch_size is per rank and per micro-step; steps_per_epoch counts micro-steps per rank (None:
    one pass over the train split's samples across all ranks). unknown_classes: classes whose labels
    are set unknown (-1) in every training batch and in validation, e.g. held out for zero-shot
    evaluation: the run never sees one of their labels. max_views: view slots per study item (study
    level, at most model.study.max_views); training draws a random subset of a larger study each time,
    validation scores it in view chunks (cxrlt.data.decoding). max_bad_fraction: training skips damaged
    samples (truncated tar, broken json, undecodable image) and fails once they pass this fraction of
    the samples a rank's reader read in an epoch (0: fail on the first); validation never skips.

    Multi-source training (cxrlt.data.multisource): `sources` are extra labelled shard sets, tables
    `{shards, ratio, split = "train"}`, each drawn at `ratio` of the training samples; `shards` (the
    primary, whose dev split validates the run) keeps 1 - sum(ratios). `schema`: the run's classes, ""
    the primary's, "union" every set's (CXR-LT 2024 spelling, the primary's first), or a registered
    schema name; each sample's labels are mapped onto them by name, a class its set lacks unknown (-1).
    Without steps_per_epoch an epoch is one expected pass over the primary's train split at its share."""

    shards: Path | None = None
    sources: list[Source] = field(default_factory=list)
    schema: str = ""
    train_split: str = "train"
    dev_split: str = "dev"
    synthetic: Path | None = None
    synthetic_ratio: float = 0.0
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 0
    steps_per_epoch: int | None = None
    repeat_threshold: float | None = None
    shuffle_buffer: int = 1000
    max_views: int = 4
    max_bad_fraction: float = 0.01
    unknown_classes: list[str] = field(default_factory=list)
    # A weak-label CSV (`cxrlt zeroshot weak-labels`, cxrlt.data.weak_labels): its classes (the header's,
    # none of the run's) are appended to the run's and trained from the table's labels (trainers.pseudo);
    # its dev-split rows, if any, are scored in validation (elsewhere those classes are unknown there).
    weak_labels: Path | None = None
    transform: TransformConfig = field(default_factory=TransformConfig)

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size", "eval_batch_size", "steps_per_epoch", "shuffle_buffer", "max_views")
        _at_least(self, 0, "num_workers")
        _finite(self, "synthetic_ratio", "repeat_threshold", "max_bad_fraction")
        if not 0 <= self.max_bad_fraction < 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1), got {self.max_bad_fraction!r}")
        if not 0 <= self.synthetic_ratio < 1:
            raise ValueError(f"synthetic_ratio must be in [0, 1), got {self.synthetic_ratio!r}")
        if self.repeat_threshold is not None and not 0 < self.repeat_threshold <= 1:
            raise ValueError(f"repeat_threshold must be in (0, 1], got {self.repeat_threshold!r}")
        if not valid_schema_choice(self.schema):
            known = ", ".join(SCHEMAS)
            raise ValueError(f"schema must be '', {UNION!r} or a registered schema ({known}), got {self.schema!r}")
        primary_share(self.sources)

    @property
    def shard_dir(self) -> Path:
        """`shards`, which every run needs (trainers.stages.check_inputs refuses a config without it)."""
        if self.shards is None:
            raise InputError("data.shards is not set: give the shard folder written by `cxrlt shard`")
        return self.shards


@dataclass
class OptimConfig:
    """AdamW; the learning rate warms up linearly for `warmup_steps` optimizer steps, then follows a
    cosine down to lr * min_lr_ratio at the last step. grad_accum micro-steps make one optimizer step."""

    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    grad_accum: int = 1

    def __post_init__(self) -> None:
        _finite(self, "lr", "weight_decay", "betas", "eps", "min_lr_ratio", "grad_clip")
        if not all(0 <= b < 1 for b in self.betas) or self.eps <= 0:
            raise ValueError(f"betas must be in [0, 1) and eps > 0, got betas={self.betas!r}, eps={self.eps!r}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr must be > 0, weight_decay >= 0 and min_lr_ratio in [0, 1]")
        if self.grad_accum < 1 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("grad_accum must be >= 1; warmup_steps and grad_clip >= 0")


@dataclass
class ScheduleConfig:
    """monitor: the dev metric that picks the best checkpoint and drives early stopping ("loss" is the
    dev loss, minimised; the others are maximised). patience: epochs without improvement before
    stopping (0: never stop early)."""

    epochs: int = 10
    monitor: str = "mAP"
    patience: int = 0
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        _finite(self, "min_delta")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta!r}")
        if self.epochs < 1 or self.patience < 0:
            raise ValueError("epochs must be >= 1 and patience >= 0")
        if self.monitor not in METRICS:
            raise ValueError(f"monitor must be one of {METRICS}, got {self.monitor!r}")


@dataclass
class CheckpointConfig:
    """every_steps: also checkpoint every N optimizer steps inside an epoch (0: epoch ends only);
    keep_last: training checkpoints kept on disk (the best model file is always kept)."""

    every_steps: int = 0
    keep_last: int = 2

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.keep_last < 1:
            raise ValueError("every_steps must be >= 0 and keep_last >= 1")


@dataclass
class DeepSpeedConfig:
    """zero_stage 0-2: stage 3 partitions the parameters themselves, which the EMA copy and the
    trained-model files need whole, and no model here is too large for one device.
    precision: "auto" is bf16 on CUDA and fp32 on CPU."""

    zero_stage: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    backend: Literal["auto", "gloo", "nccl"] = "auto"

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")


@dataclass
class StageConfig:
    """name: "image", "study", "student" or "contrastive" (image/study tower + report text, CLIP or
    SigLIP; needs model.kind = "contrastive" and shards with report text, see trainers.contrastive).
    init_from: a trained-model file (best.pt) whose weights start this run: the whole model for
    image/student/contrastive, the backbone of every view encoder for study.
    init_head: what of init_from's image model an image/student stage takes. "all": the whole model (the
    file must be trained on the shards' classes); "shared": the backbone, the head's class-independent
    weights and the head rows of the classes both schemas share by name (a model trained on another
    schema, e.g. NIH-14 -> CXR-LT 2024); "none": the backbone only, a fresh head (cxrlt.models.crossschema).
    freeze_backbone: keep the backbone(s) fixed (only the head / fusion learn)."""

    name: str = "image"
    init_from: Path | None = None
    init_head: str = "all"
    freeze_backbone: bool = False

    def __post_init__(self) -> None:
        if self.name not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.name!r}")
        if self.init_head not in INIT_HEADS:
            raise ValueError(f"init_head must be one of {INIT_HEADS}, got {self.init_head!r}")
        if self.init_head != "all" and self.name not in ("image", "student"):
            raise ValueError(
                f"init_head = {self.init_head!r} is for the image and student stages; the {self.name} stage "
                "takes init_from as it is (study: the backbone of every view encoder)"
            )


@dataclass
class StudentConfig:
    """Noisy student. teacher: the first teacher's model file. unlabelled: a shard set (same classes,
    labels unknown) mixed into training at `unlabelled_ratio`. Each of `iterations` rounds writes the
    teacher's pseudo-labels (soft probabilities, or 0/1 at `hard_threshold` when `hard`), replaces the
    unknown labels of every training sample with them, trains a student, and makes it the next teacher."""

    teacher: Path | None = None
    unlabelled: Path | None = None
    unlabelled_ratio: float = 0.5
    iterations: int = 1
    hard: bool = False
    hard_threshold: float = 0.5

    def __post_init__(self) -> None:
        _finite(self, "unlabelled_ratio", "hard_threshold")
        if not 0 <= self.hard_threshold <= 1:
            raise ValueError(f"hard_threshold must be in [0, 1], got {self.hard_threshold!r}")
        if self.iterations < 1 or not 0 <= self.unlabelled_ratio < 1:
            raise ValueError("iterations must be >= 1 and unlabelled_ratio in [0, 1)")


@dataclass
class TrainConfig:
    """resolutions: train one member per size (each sets data.transform.size and model.backbone.img_size);
    empty: train once at data.transform.size."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    resolutions: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        multiple = size_multiple(self.model.backbone.name)
        bad = [size for size in self.resolutions if size < multiple or size % multiple]
        if bad:
            raise ValueError(
                f"resolutions {bad}: backbone {self.model.backbone.name} takes multiples of {multiple} (>= {multiple})"
            )
        if len(set(self.resolutions)) != len(self.resolutions):
            raise ValueError(f"resolutions must be distinct, got {self.resolutions}")

    @property
    def level(self) -> str:
        """The reader level: study models read study batches, image and student stages image batches
        unless the model is a study model."""
        return self.model.level
