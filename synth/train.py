"""`cxrlt synth train`: the single-process training loop of the conditional diffusion model.

Batches come from cxrlt's own training reader (resampled shards, fixed steps per epoch), with the
images normalised to [-1, 1]. Each step draws the condition drop, the noise and the timesteps from one
CPU generator whose state is in the checkpoint, so a resumed run repeats the uninterrupted run's
numbers. Outputs in the run folder: config.toml, checkpoint.pt (model, optimizer, EMA, step, data
position, generator; written atomically every `checkpoint_every` steps, at the end and on a stop
request), model.pt (the synth-model file `sample` reads: EMA weights when EMA is on), grids/. MLflow
gets the loss and a sample grid (one image per class) every `grid_every` steps and at the end.

Preemption (cxrlt.requeue): SIGUSR1/SIGTERM or the run folder's stop-request file -> checkpoint after
the current step -> exit REQUEUE_EXIT_CODE. Rerunning with `--resume` continues from checkpoint.pt; as
with `cxrlt train`, a folder that holds a checkpoint is never trained over without it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrlt.atomic import atomic_path
from cxrlt.config import config_hash, to_dict, write_config
from cxrlt.data.readers import ReaderConfig, TrainReader, make_loader
from cxrlt.data.shardset import read_index
from cxrlt.data.transforms import TransformConfig
from cxrlt.errors import InputError
from cxrlt.models.ema import create_ema
from cxrlt.requeue import REQUEUE_EXIT_CODE, STOP_SIGNALS, clear_stop_request, stop_requested
from cxrlt.tracking import Run, Tracker, default_uri
from synth.config import MODEL_FILE, SynthConfig, TrainConfig
from synth.grid import save_grid
from synth.model import Diffusion, build_diffusion, save_synth_model

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
# Keys that may change between attempts of one run: they do not change what a step computes.
RESUMABLE_CHANGES = ("steps", "log_every", "grid_every", "grid_steps", "workers")


def reader_transform(size: int, augment: bool) -> TransformConfig:
    """Images in [-1, 1] at `size`; augmentation milder than the classifier's, since what the model
    learns to draw is the augmented distribution."""
    if not augment:
        return TransformConfig(
            size=size,
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
            rotate_degrees=0.0,
            translate=0.0,
            zoom=(1.0, 1.0),
            brightness=0.0,
            contrast=0.0,
            mean=0.5,
            std=0.5,
        )
    return TransformConfig(
        size=size,
        crop_scale=(0.85, 1.0),
        crop_ratio=(0.95, 1.05),
        rotate_degrees=5.0,
        translate=0.03,
        zoom=(0.97, 1.03),
        brightness=0.1,
        contrast=0.1,
        mean=0.5,
        std=0.5,
    )


class StopFlag:
    """True once a stop signal arrived or the run folder holds a stop request."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.signalled = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        def handle(signum: int, frame: Any) -> None:
            self.signalled = True

        previous = {name: signal.signal(getattr(signal, name), handle) for name in STOP_SIGNALS}
        try:
            yield self
        finally:
            for name, handler in previous.items():
                signal.signal(getattr(signal, name), handler)

    def __bool__(self) -> bool:
        return self.signalled or stop_requested(self.run_dir)


def _compared(cfg: SynthConfig) -> dict[str, Any]:
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in RESUMABLE_CHANGES}
    return {"model": to_dict(cfg.model), "train": train}


def _check_resumable(saved: dict[str, Any], cfg: SynthConfig, classes: list[str], path: Path) -> None:
    if saved["classes"] != classes:
        raise InputError(f"{path}: trained on other classes than data.shards; choose another run.out_dir")
    current = _compared(cfg)
    for section in current:
        changed = sorted(
            k
            for k in current[section].keys() | saved["config"][section].keys()
            if current[section].get(k) != saved["config"][section].get(k)
        )
        if changed:
            raise InputError(
                f"{path}: checkpoint of a different config ({section}.{changed[0]} changed); "
                f"only train.{{{', '.join(RESUMABLE_CHANGES)}}} may change on resume; choose another run.out_dir"
            )


class Trainer:
    """Model, optimizer, EMA and position of one run; `fit` runs it to `steps` or to a stop request."""

    def __init__(self, cfg: SynthConfig, shards: Path, out: Path, device: torch.device) -> None:
        self.cfg = cfg
        self.out = out
        self.index = read_index(shards)
        if self.index.level != "image":
            raise InputError(f"{shards}: synth trains on image-level shards, this set is {self.index.level}-level")
        t: TrainConfig = cfg.train
        torch.manual_seed(t.seed)
        self.diffusion: Diffusion = build_diffusion(cfg.model, self.index.classes).to(device)
        self.params = [p for p in self.diffusion.trainable.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)
        self.ema = create_ema(self.diffusion.trainable, t.ema)
        self.generator = torch.Generator().manual_seed(t.seed)
        self.step = self.epoch = self.consumed = 0
        self.run_id: str | None = None
        self.reader = TrainReader(
            shards,
            ReaderConfig(
                batch_size=t.batch_size,
                shuffle_buffer=t.shuffle_buffer,
                seed=t.seed,
                steps_per_epoch=t.checkpoint_every,
                transform=reader_transform(cfg.model.image_size, t.augment),
            ),
        )

    @property
    def sampling_modules(self) -> nn.ModuleDict:
        return self.ema.module if self.ema is not None else self.diffusion.trainable

    def save_checkpoint(self) -> Path:
        state = {
            "trainable": self.diffusion.trainable.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "generator": self.generator.get_state(),
            "classes": list(self.index.classes),
            "config": _compared(self.cfg),
            "mlflow_run_id": self.run_id,
        }
        path = self.out / CHECKPOINT
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    def resume(self, allowed: bool) -> bool:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return False
        if not allowed:
            raise InputError(f"{self.out} already has {CHECKPOINT}; pass --resume or choose another run.out_dir")
        state = torch.load(path, map_location="cpu", weights_only=True)
        _check_resumable(state, self.cfg, list(self.index.classes), path)
        self.diffusion.trainable.load_state_dict(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.generator.set_state(state["generator"])
        self.step, self.epoch, self.consumed = state["step"], state["epoch"], state["consumed"]
        self.run_id = state["mlflow_run_id"]
        return True

    def grid(self, run: Run) -> Path:
        """One image per class (that class positive, the rest negative), fixed seeds across the run."""
        k = len(self.index.classes)
        generators = [torch.Generator().manual_seed(i) for i in range(k)]
        images = self.diffusion.sample(
            self.sampling_modules, torch.eye(k), self.cfg.sample.guidance, self.cfg.train.grid_steps, generators
        )
        path = save_grid(images, self.out / "grids" / f"step-{self.step:07d}.png")
        run.log_artifact(path, "grids")
        return path

    def _train_step(self, batch: dict[str, Any]) -> float:
        t = self.cfg.train
        drop = torch.rand(len(batch["labels"]), generator=self.generator) < t.cond_drop
        loss = self.diffusion.loss(self.diffusion.trainable, batch["image"], batch["labels"], drop, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.diffusion.trainable, step=self.step + 1)
        return float(loss.detach())

    def fit(self, run: Run, stop: StopFlag) -> bool:
        """Train until `steps` (True) or a stop request (False); checkpoints as documented above."""
        t = self.cfg.train
        self.diffusion.trainable.train()
        losses: list[float] = []
        started = time.perf_counter()
        while self.step < t.steps:
            self.reader.set_epoch(self.epoch)
            for position, batch in enumerate(make_loader(self.reader, t.workers)):
                if position < self.consumed:  # replaying the part of this epoch a previous attempt used
                    continue
                losses.append(self._train_step(batch))
                self.step += 1
                self.consumed = position + 1
                if self.consumed == len(self.reader):
                    self.epoch, self.consumed = self.epoch + 1, 0
                if self.step % t.log_every == 0 or self.step == t.steps:
                    seconds = time.perf_counter() - started
                    run.log_metrics(
                        {"loss": sum(losses) / len(losses), "seconds_per_step": seconds / len(losses)}, self.step
                    )
                    losses, started = [], time.perf_counter()
                if self.step % t.grid_every == 0 and self.step < t.steps:
                    self.grid(run)
                stopping = bool(stop)
                if stopping or self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self.save_checkpoint()
                if stopping:
                    return False
                if self.step == t.steps:
                    break
        return True


def train(cfg: SynthConfig, resume: bool = False, device: str | None = None) -> int:
    """Train (or resume) into run.out_dir; 0 when finished, REQUEUE_EXIT_CODE when stopped for requeue."""
    out = cfg.run.out_dir
    trainer = Trainer(cfg, cfg.shards, out, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    resumed = trainer.resume(resume)
    out.mkdir(parents=True, exist_ok=True)
    clear_stop_request(out)
    write_config(cfg, out / CONFIG)
    tracker = Tracker(cfg.run.tracking_uri or default_uri(out))
    digest = config_hash(cfg)
    tags = {
        "cxrlt.command": "synth train",
        "cxrlt.config_hash": digest,
        "cxrlt.resumed_from_step": trainer.step if resumed else "",
    }
    # A resumed attempt continues the first attempt's MLflow run: one run, one loss history.
    with (
        tracker.run(cfg.run.experiment, f"synth-train-{digest}", tags=tags, resume_run_id=trainer.run_id) as run,
        StopFlag(out).installed() as stop,
    ):
        trainer.run_id = run.run_id
        if not resumed:  # MLflow params are write-once; a resume may only raise train.steps (a tag below)
            run.log_params(
                {
                    "shards": cfg.shards,
                    "image_size": cfg.model.image_size,
                    "pretrained": cfg.model.pretrained,
                    "batch_size": cfg.train.batch_size,
                    "lr": cfg.train.lr,
                }
            )
        run.set_tags({"cxrlt.steps": cfg.train.steps})
        run.log_artifact(out / CONFIG)
        if not trainer.fit(run, stop):
            run.set_tags({"cxrlt.stopped_at_step": trainer.step})
            return REQUEUE_EXIT_CODE
        trainer.grid(run)
        save_synth_model(
            out / MODEL_FILE, trainer.diffusion, trainer.sampling_modules, trainer.index.schema, trainer.step, digest
        )
    return 0
