"""The `cxrlt synth` config tree (TOML + `--set` overrides through cxrlt.config).

One tree serves train, sample and report, so the config written beside a trained model says how its
images were made and a later `sample` can reuse it unchanged. Like `cxrlt train`, everything lives in
one run folder (`run.out_dir`; `cxrlt slurm synth` sets it): checkpoint.pt and model.pt from train,
synthetic/ (the shard set the trainer's `data.synthetic` points at) from sample, report/ from report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxrlt.errors import InputError
from cxrlt.models.ema import EmaConfig

MODEL_FILE = "model.pt"


@dataclass
class UNetConfig:
    """The from-scratch UNet2DConditionModel. Attention sits in every block but the first (full
    resolution), where self-attention over H*W tokens would cost more than the rest of the net."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    layers_per_block: int = 2
    attention_head_dim: int = 8
    cross_attention_dim: int = 256
    norm_num_groups: int = 32

    def __post_init__(self) -> None:
        if len(self.block_out_channels) < 2:
            raise ValueError("block_out_channels needs at least two levels")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"every block_out_channels entry must be divisible by norm_num_groups={self.norm_num_groups}"
            )


@dataclass
class DiffusionConfig:
    """image_size: training and sampling resolution (square, grayscale).

    pretrained: a local diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/,
    scheduler/), e.g. RoentGen; its UNet is fine-tuned in the VAE's latent space with text prompts built
    from label names. Without it a pixel-space UNet is trained from random init, conditioned on
    per-class label tokens. `prompt` fills "{}" with the positive findings, comma-separated;
    `empty_prompt` is used when a label set has none.
    """

    image_size: int = 64
    pretrained: Path | None = None
    prompt: str = "a chest x-ray showing {}"
    empty_prompt: str = "a chest x-ray with no finding"
    unet: UNetConfig = field(default_factory=UNetConfig)
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {self.image_size}")
        if "{}" not in self.prompt:
            raise ValueError(f"prompt must contain '{{}}' for the findings, got {self.prompt!r}")


@dataclass
class TrainConfig:
    """checkpoint_every is also the reader's epoch length, so most checkpoints fall on an epoch boundary
    and resuming replays nothing; a stop request mid-epoch replays (decodes and drops) the batches
    already used in that epoch. cond_drop: share of samples trained unconditioned (for guidance)."""

    steps: int = 20000
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    cond_drop: float = 0.1
    augment: bool = True
    checkpoint_every: int = 500
    log_every: int = 50
    grid_every: int = 2000
    grid_steps: int = 25
    shuffle_buffer: int = 1000
    workers: int = 0
    seed: int = 0
    ema: EmaConfig = field(default_factory=lambda: EmaConfig(enabled=True, decay=0.999))

    def __post_init__(self) -> None:
        if (
            min(self.steps, self.batch_size, self.checkpoint_every, self.log_every, self.grid_every, self.grid_steps)
            < 1
        ):
            raise ValueError("steps, batch_size, checkpoint_every, log_every, grid_every and grid_steps must be >= 1")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")


@dataclass
class SampleConfig:
    """Target classes: `classes` when given, else every class whose share of the real train split is
    below `tail_threshold` (and that has at least one positive to draw co-occurring findings from).
    model: the synth-model file (default: run.out_dir/model.pt); out: the synthetic set's folder
    (default: run.out_dir/synthetic)."""

    model: Path | None = None
    out: Path | None = None

    tail_threshold: float = 0.01
    classes: list[str] = field(default_factory=list)
    per_class: int = 200
    guidance: float = 3.0
    ddim_steps: int = 50
    eta: float = 0.0
    batch_size: int = 32
    seed: int = 0
    samples_per_shard: int = 1000

    def __post_init__(self) -> None:
        if min(self.per_class, self.ddim_steps, self.batch_size, self.samples_per_shard) < 1:
            raise ValueError("per_class, ddim_steps, batch_size and samples_per_shard must be >= 1")


@dataclass
class FilterConfig:
    """classifier: a trained-model file (cxrlt.models.saved, e.g. a run's best.pt); without one every
    candidate is kept and recorded as unfiltered."""

    classifier: Path | None = None
    threshold: float = 0.5
    use_ema: bool = True
    batch_size: int = 64


@dataclass
class ReportConfig:
    """The fidelity figure: cross-validated AUC of a logistic regression telling real from synthetic
    train images on `pixels` x `pixels` downsampled pixels (0.5 = indistinguishable).
    out: the report folder (default: run.out_dir/report)."""

    out: Path | None = None
    pixels: int = 16
    folds: int = 5
    max_real: int = 2000
    grid_max: int = 16
    seed: int = 0


@dataclass
class RunConfig:
    """out_dir: the run folder.

    tracking_uri: an MLflow URI; default: $MLFLOW_TRACKING_URI, else a SQLite store in out_dir.
    """

    out_dir: Path = Path("runs/synth")
    tracking_uri: str | None = None
    experiment: str = "synth"


@dataclass
class DataConfig:
    """shards: the real image-level shard set (its train split is what the model learns and what label
    sets are drawn from)."""

    shards: Path | None = None


@dataclass
class SynthConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def shards(self) -> Path:
        if self.data.shards is None:
            raise InputError("data.shards is not set: give the real shard set (--set data.shards=DIR)")
        return self.data.shards

    @property
    def model_file(self) -> Path:
        return self.sample.model or self.run.out_dir / MODEL_FILE

    @property
    def synthetic_dir(self) -> Path:
        return self.sample.out or self.run.out_dir / "synthetic"

    @property
    def report_dir(self) -> Path:
        return self.report.out or self.run.out_dir / "report"
