"""Shared fixtures for the zero-shot tests: one real in-process training run of a text-query member
with three NIH findings held out, recording every batch the trainer builds."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

import trainers.loop
from cxrlt.models.saved import load_model
from launch.main import main as cxrlt_main
from tests.trainers.conftest import CONFIG, starter64  # noqa: F401 (the 64 px shard fixture)
from trainers.worker import main as worker_main

HELD_OUT = ("Cardiomegaly", "Effusion", "Pneumothorax")
EPOCHS, STEPS = 2, 3
RENDEZVOUS_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TEXT_HEAD = (
    "model.head.name=ml_decoder",
    "model.head.text_queries=true",
    "model.head.decoder_dim=32",
    "model.head.num_heads=2",
    "model.head.ffn_dim=64",
    "model.class_descriptions=nih-14",
)


def clear_rendezvous(patch: pytest.MonkeyPatch) -> None:
    """A one-rank command in this process sets the rendezvous variables; undo restores them."""
    for key in RENDEZVOUS_ENV:
        patch.delenv(key, raising=False)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """Run a `cxrlt` command in this process (the console script's parser and code path, without the
    seconds of start-up a subprocess costs): returns (exit status, stdout, stderr)."""
    clear_rendezvous(monkeypatch)

    def run(*args: object) -> tuple[int, str, str]:
        status = cxrlt_main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


@dataclass
class Recorded:
    """What the training loop handed on: raw batch labels (before the loop's masking), the loss
    targets, and the label matrices validation scored."""

    raw_labels: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    dev_labels: list[torch.Tensor] = field(default_factory=list)


@dataclass
class HeldOutRun:
    run_dir: Path
    classes: list[str]
    recorded: Recorded


@pytest.fixture(scope="session")
def held_out_run(tmp_path_factory: pytest.TempPathFactory, starter64: Path) -> HeldOutRun:  # noqa: F811
    """`cxrlt train`'s one-rank worker, in this process, with the loss, the batch conversion and the
    dev evaluation wrapped to record their inputs (the loop itself is the real one, unmodified)."""
    work = tmp_path_factory.mktemp("zeroshot-run")
    recorded = Recorded()
    real_loss, real_inputs, real_evaluate = trainers.loop.build_loss, trainers.loop.model_inputs, trainers.loop.evaluate

    class RecordingLoss(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            recorded.targets.append(targets.detach().cpu().clone())
            return self.inner(logits, targets)

    def recording_inputs(batch, level, device):
        recorded.raw_labels.append(batch["labels"].clone())  # the loop masks this tensor next
        return real_inputs(batch, level, device)

    def recording_evaluate(labels, *args, **kwargs):
        recorded.dev_labels.append(torch.as_tensor(labels).clone())
        return real_evaluate(labels, *args, **kwargs)

    held = "[" + ",".join(f'"{c}"' for c in HELD_OUT) + "]"
    overrides = (
        f"data.shards={starter64}",
        f"run.out_dir={work / 'run'}",
        f"run.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"schedule.epochs={EPOCHS}",
        f"data.steps_per_epoch={STEPS}",
        f"data.unknown_classes={held}",
        *TEXT_HEAD,
    )
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainers.loop, "build_loss", lambda *a, **k: RecordingLoss(real_loss(*a, **k)))
        patch.setattr(trainers.loop, "model_inputs", recording_inputs)
        patch.setattr(trainers.loop, "evaluate", recording_evaluate)
        patch.chdir(work)
        clear_rendezvous(patch)
        try:
            status = worker_main([str(CONFIG), *[a for o in overrides for a in ("--set", o)]])
        finally:
            # The one-rank worker installs stop-signal handlers for good.
            for signum, handler in saved_signals.items():
                signal.signal(signum, handler)
    assert status == 0
    return HeldOutRun(work / "run", list(load_model(work / "run" / "best.pt").classes), recorded)
