"""One training run (a "member"): engine, data, the train step, validation, checkpoint decisions.

Read `train_member` top to bottom: it builds everything from the config, restores the latest
checkpoint when resuming, then runs epochs of a fixed number of micro-steps. Every optimizer step ends
at a *step boundary*, where the EMA is updated, the loss is logged every `run.log_every` steps, a stop
request (signal or stop file on any rank) is agreed on with one all-reduce, and periodic checkpoints
are written. Every epoch ends with validation on the dev split (each sample once across ranks), the
best-checkpoint and early-stopping decision taken on rank 0 and broadcast, the trained-model files
(`last.pt`, `best.pt`) and a training checkpoint.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cxrlt.atomic import write_text_atomic
from cxrlt.data.multisource import TrainingCounts, open_training_sets
from cxrlt.data.readers import EvalReader, ReaderConfig, TrainReader, make_loader
from cxrlt.data.shardset import ShardIndex
from cxrlt.errors import InputError
from cxrlt.metrics import Evaluation, evaluate
from cxrlt.models.ema import create_ema
from cxrlt.models.losses import LossConfig, build_loss
from cxrlt.models.saved import save_model
from cxrlt.predictions import PredictionMeta, write_predictions
from cxrlt.requeue import REQUEUE_EXIT_CODE, STOP_SIGNALS, stop_requested
from cxrlt.tracking import Run
from trainers import distributed
from trainers.batches import model_inputs
from trainers.checkpointing import Checkpointer, TrainState
from trainers.config import TrainConfig
from trainers.contrastive import ContrastiveCriterion, report_kwargs
from trainers.engine import build_engine, trainer_clips, use_bf16
from trainers.inference import SplitOutputs, image_rows, predict_split
from trainers.modelinit import build_member_model
from trainers.pseudo import LabelOverlay, PseudoLabels, member_schema, weak_label_overlay
from trainers.reports import plot_history, write_per_class

RESULT = "result.json"
PREEMPTED = "PREEMPTED"
EpochCallback = Callable[[int, dict[str, float], Path], None]


@dataclass
class MemberResult:
    run_dir: Path
    best_model: Path
    best_epoch: int
    best_score: float
    dev_metrics: dict[str, float]
    mlflow_run_id: str | None

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}, indent=1)


def load_result(run_dir: Path) -> MemberResult | None:
    path = run_dir / RESULT
    if not path.is_file():
        return None
    payload = json.loads(path.read_text(encoding="utf-8"))
    return MemberResult(**{**payload, "run_dir": Path(payload["run_dir"]), "best_model": Path(payload["best_model"])})


class StopWatch:
    """Remembers a stop request: SIGUSR1 / SIGTERM to this process, or the stop file in `stop_dir`."""

    def __init__(self, stop_dir: Path) -> None:
        self.stop_dir = stop_dir
        self.signalled: str | None = None
        # Signal handlers can only be installed from the main thread (a Tune trial may run elsewhere).
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                signal.signal(getattr(signal, name), self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = signal.Signals(signum).name

    def requested(self) -> bool:
        return self.signalled is not None or stop_requested(self.stop_dir)


def dev_metrics(evaluation: Evaluation, dev_loss: float) -> dict[str, float]:
    metrics = {
        "mAP": evaluation.mAP,
        "mAUROC": evaluation.mAUROC,
        "mF1": evaluation.mF1,
        "mECE": evaluation.mECE,
        "group_average_mAP": evaluation.group_average_mAP,
        "loss": dev_loss,
    }
    metrics.update({f"mAP_{group}": value for group, value in evaluation.group_mAP.items()})
    return metrics


def masked_bce(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy over the known labels (the dev "loss" monitor)."""
    known = labels >= 0
    p = np.clip(probs[known].astype(np.float64), 1e-7, 1 - 1e-7)
    y = labels[known]
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if known.any() else math.nan


def improved(score: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if math.isnan(score):
        return False
    if best is None:
        return True
    return score < best - min_delta if monitor == "loss" else score > best + min_delta


def build_criterion(
    loss: LossConfig, index: ShardIndex, split: str, counts: TrainingCounts | None = None
) -> torch.nn.Module:
    """The configured loss, weighted by `split`'s positive counts (None for a class the split never
    annotates, so it neither gets nor distorts a frequency weight), or by a run's `counts` over all its
    training sets in its schema (cxrlt.data.multisource.training_counts: the same for one set)."""
    if counts is None:
        return build_loss(loss, index.positive_counts(split), index.splits[split])
    return build_loss(loss, counts.positives, counts.total)


def train_step(
    engine: Any,
    criterion: torch.nn.Module,
    batch: dict[str, Any],
    level: str,
    device: torch.device,
    overlays: Sequence[LabelOverlay] = (),
    held_out: Sequence[int] = (),
    clip: float = 0.0,
    reports: bool = False,
) -> tuple[torch.Tensor, bool]:
    """One micro-step: forward, masked loss, backward, and the optimizer step when this micro-step ends
    a gradient-accumulation window. `clip` > 0 clips the gradient norm here (see
    trainers.engine.trainer_clips). `reports`: the model also reads the batch's report text (the
    contrastive stage). Returns (the detached loss, whether it was an optimizer step)."""
    inputs = model_inputs(batch, level, device)
    if reports:
        inputs.kwargs.update(report_kwargs(batch))
    targets = batch["labels"].to(device, non_blocking=True)
    for overlay in overlays:  # weak labels widen the targets to the member's classes, then the teacher fills
        targets = overlay.fill(batch["id"], targets)
    targets[:, list(held_out)] = -1.0
    boundary = engine.is_gradient_accumulation_boundary()
    loss = criterion(engine(*inputs.args, **inputs.kwargs), targets)
    engine.backward(loss)
    if boundary and clip > 0:
        torch.nn.utils.clip_grad_norm_(
            [p for p in engine.module.parameters() if p.grad is not None], clip, foreach=True
        )
    engine.step()
    return loss.detach(), boundary


def train_member(
    cfg: TrainConfig,
    run_dir: Path,
    index: ShardIndex,
    ctx: distributed.Context,
    tracker_run: Run,
    stop: StopWatch,
    config_hash: str,
    resume: bool,
    pseudo: PseudoLabels | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> MemberResult:
    """Train one member into `run_dir`; returns its result (on every rank)."""
    level = cfg.level
    # The run's classes and training counts over every labelled set (one without data.sources).
    training = open_training_sets(cfg.data.shard_dir, cfg.data.train_split, cfg.data.sources, cfg.data.schema)
    schema = training.schema
    classes = list(schema.classes)
    counts = training.counts()
    # Weak-label classes follow the schema's; their counts come from the table (trainers.pseudo).
    weak = None
    if cfg.data.weak_labels is not None:
        weak = weak_label_overlay(cfg.data.weak_labels, classes, level, cfg.data.train_split)
        classes += weak.classes
        counts = weak.extend(counts)
    schema_name = schema.name if weak is None else member_schema(schema.name, classes)

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    model = build_member_model(cfg, classes).to(ctx.device)
    torch.manual_seed(cfg.run.seed * 1000 + 1 + ctx.rank)  # per-rank dropout / stochastic depth
    ema = create_ema(model, cfg.ema)
    contrastive = cfg.stage.name == "contrastive"
    if contrastive:
        if cfg.model.contrastive is None:  # trainers.stages refuses this pairing before any run starts
            raise InputError("stage.name = 'contrastive' needs model.kind = 'contrastive'")
        criterion: torch.nn.Module = ContrastiveCriterion(cfg.model.contrastive.loss)
    else:
        criterion = build_criterion(cfg.loss, index, cfg.data.train_split, counts).to(ctx.device)

    reader_cfg = ReaderConfig(
        level=level,
        split=cfg.data.train_split,
        batch_size=cfg.data.batch_size,
        max_views=cfg.data.max_views,
        shuffle_buffer=cfg.data.shuffle_buffer,
        seed=cfg.run.seed,
        steps_per_epoch=cfg.data.steps_per_epoch,
        repeat_threshold=cfg.data.repeat_threshold,
        synthetic_ratio=cfg.data.synthetic_ratio,
        unlabelled_ratio=cfg.student.unlabelled_ratio if pseudo is not None else 0.0,
        transform=cfg.data.transform,
        max_bad_fraction=cfg.data.max_bad_fraction,
    )
    reader = TrainReader(
        cfg.data.shard_dir,
        reader_cfg,
        synthetic=cfg.data.synthetic,
        unlabelled=cfg.student.unlabelled if pseudo is not None else None,
        sources=cfg.data.sources,
        schema=schema,
    )
    accum = cfg.optim.grad_accum
    # An epoch ends on an optimizer step: round the micro-steps up to a multiple of grad_accum.
    reader.steps_per_epoch = math.ceil(reader.steps_per_epoch / accum) * accum
    total_steps = cfg.schedule.epochs * reader.steps_per_epoch // accum
    engine, scheduler = build_engine(
        model, cfg.optim, cfg.deepspeed, cfg.data.batch_size, ctx.world_size, total_steps, ctx.device
    )
    bf16 = use_bf16(cfg.deepspeed, ctx.device)
    clip = cfg.optim.grad_clip if trainer_clips(cfg.deepspeed) else 0.0
    eval_reader = EvalReader(
        cfg.data.shard_dir,
        ReaderConfig(
            level=level,
            split=cfg.data.dev_split,
            batch_size=cfg.data.eval_batch_size,
            max_views=cfg.data.max_views,
            seed=cfg.run.seed,
            transform=cfg.data.transform,
        ),
        schema=schema,
    )
    groups = counts.groups
    held_out = [classes.index(c) for c in cfg.data.unknown_classes]
    transform_meta = {k: getattr(cfg.data.transform, k) for k in ("size", "channels", "mean", "std")}

    checkpointer = Checkpointer(run_dir, cfg.checkpoint.keep_last, ctx.rank)
    state, restored_from = TrainState(), None
    if checkpointer.exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already has checkpoints; pass --resume or choose another run.out_dir")
        # The newest kept checkpoint that loads; damaged ones are passed over with a warning.
        state, latest = checkpointer.restore(engine, ema.module if ema is not None else None, config_hash)
        restored_from = latest
        if ctx.is_main:
            print(
                f"resuming {run_dir} from {latest.name} (epoch {state.epoch + 1}, micro-step {state.step_in_epoch})",
                file=sys.stderr,
            )

    def save_checkpoint() -> None:
        checkpointer.save(engine, state, ema.module if ema is not None else None, config_hash)

    def save_models(path_name: str, metrics: dict[str, float]) -> Path:
        path = run_dir / path_name
        if ctx.is_main:
            save_model(
                path,
                engine.module,
                cfg.model,
                classes,
                schema_name,
                transform_meta,
                ema_model=ema.module if ema is not None else None,
                metrics=metrics,
                step=state.global_step,
                epoch=state.epoch,
                config_hash=config_hash,
                mlflow_run_id=tracker_run.run_id,
            )
        return path

    running_loss = torch.zeros((), device=ctx.device)
    running_count = 0
    while state.epoch < cfg.schedule.epochs and not state.finished:
        # A resumed epoch starts at the saved micro-step: the reader skips the batches before it without
        # decoding them and yields the rest as the uninterrupted epoch would (cxrlt.data.readers).
        reader.set_epoch(state.epoch, start=state.step_in_epoch)
        batches = iter(make_loader(reader, cfg.data.num_workers))
        if restored_from is not None:
            checkpointer.restore_rng(restored_from)
            restored_from = None
        engine.train()
        progress = tqdm(
            total=reader.steps_per_epoch,
            initial=state.step_in_epoch,
            desc=f"{run_dir.name} epoch {state.epoch + 1}",
            disable=not ctx.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        for batch in batches:
            loss, boundary = train_step(
                engine,
                criterion,
                batch,
                level,
                ctx.device,
                [o for o in (weak, pseudo) if o is not None],
                held_out,
                clip,
                reports=contrastive,
            )
            running_loss += loss
            running_count += 1
            state.step_in_epoch += 1
            progress.update()
            if not boundary:
                continue
            state.global_step += 1
            if ema is not None:
                ema.update(engine.module, step=state.global_step)
            if state.global_step % cfg.run.log_every == 0:
                mean_loss = float(distributed.mean_over_ranks(running_loss / running_count))
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"{run_dir}: training loss is {mean_loss} at step {state.global_step}")
                tracker_run.log_metrics(
                    {"train/loss": mean_loss, "train/lr": float(scheduler.get_last_lr()[0])}, state.global_step
                )
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                running_loss.zero_()
                running_count = 0
            if distributed.any_rank(stop.requested(), ctx):
                save_checkpoint()
                if ctx.is_main:
                    write_text_atomic(stop.stop_dir / PREEMPTED, f"{run_dir} step {state.global_step}\n")
                raise SystemExit(REQUEUE_EXIT_CODE)
            if cfg.checkpoint.every_steps and state.global_step % cfg.checkpoint.every_steps == 0:
                save_checkpoint()
        progress.close()
        filled = {}
        if pseudo is not None:
            rate = distributed.mean_over_ranks(
                torch.tensor(pseudo.take_fill_rate(), dtype=torch.float64, device=ctx.device)
            )
            filled = {"train_pseudo_filled": float(rate)}
        if weak is not None:
            rate = distributed.mean_over_ranks(
                torch.tensor(weak.take_fill_rate(), dtype=torch.float64, device=ctx.device)
            )
            filled["train_weak_filled"] = float(rate)

        outputs = predict_split(
            engine.module if ema is None else ema.module,
            make_loader(eval_reader, cfg.data.num_workers),
            level,
            ctx.device,
            autocast=bf16,
        )
        decision = None
        if ctx.is_main:
            if outputs is None:  # predict_split gathers every rank's share on rank 0
                raise RuntimeError("validation gathered no outputs on the main rank")
            if weak is not None:  # dev rows of the weak-label table (if any) are scored, the rest unknown
                outputs.labels = weak.apply(outputs.ids, outputs.labels)
            outputs.labels[:, held_out] = -1.0
            decision = _validate(cfg, state, outputs, classes, groups)
        metrics, is_best, stop_early = distributed.broadcast_from_main(decision)
        state.epoch += 1
        state.step_in_epoch = 0
        state.history.append({"epoch": state.epoch, "step": state.global_step, **metrics, **filled})
        tracker_run.log_metrics({f"dev/{k}": v for k, v in metrics.items() if math.isfinite(v)}, state.global_step)
        if filled:
            rates = {"train/" + k.removeprefix("train_"): v for k, v in filled.items()}
            tracker_run.log_metrics(rates, state.global_step)
        if is_best:
            state.best_score, state.best_epoch, state.bad_epochs = metrics[cfg.schedule.monitor], state.epoch, 0
            save_models("best.pt", metrics)
            if ctx.is_main and outputs is not None:  # never None on the main rank (checked above)
                _write_dev_outputs(run_dir, outputs, classes, schema_name, cfg, config_hash, tracker_run.run_id, groups)
        else:
            state.bad_epochs += 1
        state.finished = stop_early or state.epoch >= cfg.schedule.epochs
        save_models("last.pt", metrics)
        save_checkpoint()
        if on_epoch_end is not None and ctx.is_main:
            on_epoch_end(state.epoch, metrics, run_dir)

    best = next(h for h in state.history if h["epoch"] == state.best_epoch) if state.best_epoch > 0 else {}
    result = MemberResult(
        run_dir=run_dir,
        best_model=run_dir / "best.pt",
        best_epoch=state.best_epoch,
        best_score=math.nan if state.best_score is None else state.best_score,
        dev_metrics={k: v for k, v in best.items() if k not in ("epoch", "step")},
        mlflow_run_id=tracker_run.run_id,
    )
    if ctx.is_main:
        plot_history(state.history, run_dir / "history.png")
        for artifact in (
            "history.png",
            "per_class.csv",
            "dev_predictions.csv",
            "dev_predictions.csv.json",
            "config.toml",
        ):
            if (run_dir / artifact).is_file():
                tracker_run.log_artifact(run_dir / artifact)
        write_text_atomic(run_dir / RESULT, result.to_json())
    distributed.barrier()
    return result


def _validate(
    cfg: TrainConfig, state: TrainState, outputs: SplitOutputs, classes: list[str], groups: dict[str, str]
) -> tuple[dict[str, float], bool, bool]:
    """(metrics, is this the best epoch, stop early) from rank 0's gathered dev outputs."""
    evaluation = evaluate(outputs.labels, outputs.probs, classes, groups=groups)
    metrics = dev_metrics(evaluation, masked_bce(outputs.labels, outputs.probs))
    is_best = improved(metrics[cfg.schedule.monitor], state.best_score, cfg.schedule.monitor, cfg.schedule.min_delta)
    patience = cfg.schedule.patience
    stop_early = bool(patience) and not is_best and state.bad_epochs + 1 >= patience
    return metrics, is_best, stop_early


def _write_dev_outputs(
    run_dir: Path,
    outputs: SplitOutputs,
    classes: list[str],
    schema: str,
    cfg: TrainConfig,
    config_hash: str,
    run_id: str | None,
    groups: dict[str, str],
) -> None:
    """The best epoch's dev predictions (prediction-file contract) and per-class table."""
    image_ids, study_ids, rows = image_rows(outputs)
    meta = PredictionMeta(
        classes=tuple(classes),
        schema=schema,
        split=cfg.data.dev_split,
        model=cfg.run.name or run_dir.name,
        config_hash=config_hash,
        checkpoint=str(run_dir / "best.pt"),
        mlflow_run_id=run_id,
        tta="none",
    )
    write_predictions(run_dir / "dev_predictions.csv", image_ids, study_ids, outputs.probs[rows], meta)
    write_per_class(evaluate(outputs.labels, outputs.probs, classes, groups=groups), run_dir / "per_class.csv")
