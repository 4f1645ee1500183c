"""synth train: a few 32 px steps on real shards, MLflow records, checkpoints, resume and stop requests."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from cxrlt.errors import InputError
from cxrlt.requeue import request_stop
from cxrlt.tracking import Run, Tracker
from synth.config import SynthConfig
from synth.model import load_synth_model
from synth.train import CHECKPOINT, StopFlag, Trainer, train
from tests.synth.conftest import TRAIN_STEPS, MakeConfig

LONG = 6


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(make_config: MakeConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = make_config(tmp_path_factory.mktemp("uninterrupted"), f"train.steps={LONG}")
    assert train(cfg) == 0
    return cfg.run.out_dir / "model.pt"


def test_training_writes_model_grid_and_mlflow_history(trained: SynthConfig) -> None:
    out = trained.run.out_dir
    model = load_synth_model(out / "model.pt")
    assert model.step == TRAIN_STEPS and model.schema == "nih-14"
    assert model.diffusion.latent_shape == (1, 32, 32)
    assert (out / CHECKPOINT).is_file() and (out / "config.toml").is_file()
    assert (out / "grids" / f"step-{TRAIN_STEPS:07d}.png").is_file()
    run_id = torch.load(out / CHECKPOINT, weights_only=True)["mlflow_run_id"]
    client = Tracker(trained.run.tracking_uri).client
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == list(range(1, TRAIN_STEPS + 1))
    assert all(math.isfinite(m.value) and m.value > 0 for m in losses)
    assert [a.path for a in client.list_artifacts(run_id, "grids")] == [f"grids/step-{TRAIN_STEPS:07d}.png"]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_extending_a_finished_run_equals_training_it_in_one_go(
    make_config: MakeConfig, tmp_path: Path, uninterrupted: Path
) -> None:
    # 3 steps end inside the reader's 4-step epoch, so the resumed run must replay the epoch's position.
    assert train(make_config(tmp_path, "train.steps=3")) == 0
    assert train(make_config(tmp_path, f"train.steps={LONG}"), resume=True) == 0
    assert_same_weights(tmp_path / "model.pt", uninterrupted)


def test_stop_request_checkpoints_then_resume_equals_uninterrupted(
    starter: Path, make_config: MakeConfig, tmp_path: Path, uninterrupted: Path
) -> None:
    cfg = make_config(tmp_path, f"train.steps={LONG}")
    trainer = Trainer(cfg, starter, tmp_path, torch.device("cpu"))
    request_stop(tmp_path, "test")
    assert trainer.fit(Run(None, None), StopFlag(tmp_path)) is False
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 1
    assert train(cfg, resume=True) == 0  # train() clears the served stop request
    assert_same_weights(tmp_path / "model.pt", uninterrupted)


def test_stop_signal_sets_the_flag_and_handlers_are_restored(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    flag = StopFlag(tmp_path)
    with flag.installed():
        assert not flag
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag
    assert signal.getsignal(signal.SIGUSR1) is before


def test_existing_checkpoint_needs_resume_and_the_same_config(make_config: MakeConfig, trained: SynthConfig) -> None:
    out = trained.run.out_dir
    with pytest.raises(InputError, match="pass --resume"):
        train(make_config(out, f"train.steps={TRAIN_STEPS}"))
    with pytest.raises(InputError, match=r"train\.lr changed"):
        train(make_config(out, f"train.steps={TRAIN_STEPS}", "train.lr=0.1"), resume=True)


def test_missing_shards_setting_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data.shards"):
        train(SynthConfig())
