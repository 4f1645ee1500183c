"""Damaged training checkpoints (#16 B): --resume falls back to the previous kept checkpoint with a
warning naming the bad file, and fails with one clear error only when no kept checkpoint loads."""

from __future__ import annotations

import json

import pytest

from tests.cli import cxrlt_forked
from tests.trainers.conftest import train_args

pytestmark = pytest.mark.timeout(600)


def _flip(path, at: int = 2000) -> None:
    data = bytearray(path.read_bytes())
    at = min(at, len(data) // 2)
    data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    path.write_bytes(bytes(data))


def test_resume_falls_back_past_damaged_checkpoints_then_fails_clearly(starter64, tmp_path):
    out = tmp_path / "run"
    args = train_args(starter64, out, "checkpoint.every_steps=2", "schedule.epochs=1", "data.steps_per_epoch=4")
    first = cxrlt_forked(*args, "--nproc", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = out / "checkpoints"
    older, newest = checkpoints / "step-00000002", checkpoints / "step-00000004"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == [older.name, newest.name]

    # As if killed right after its last checkpoint (a finished member, with result.json, is reused).
    (out / "result.json").unlink()
    # A truncated DeepSpeed model file in the newest: resume from the previous one and train on.
    model_states = newest / "mp_rank_00_model_states.pt"
    model_states.write_bytes(model_states.read_bytes()[: model_states.stat().st_size // 2])
    resumed = cxrlt_forked(*args, "--nproc", "1", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "warning" in resumed.stderr and str(model_states) in resumed.stderr
    assert f"from {older.name}" in resumed.stderr
    assert json.loads((newest / "state.json").read_text())["global_step"] == 4  # written again, whole

    # Flipped bytes in the newest EMA file (torch.load would take them) and a broken older state.json.
    _flip(newest / "ema.pt")
    (older / "state.json").write_text('{"epoch": 0, "glob')
    (out / "result.json").unlink()
    failed = cxrlt_forked(*args, "--nproc", "1", "--resume", cwd=tmp_path)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "no kept checkpoint loads" in failed.stderr and "Traceback" not in failed.stderr
    assert str(newest / "ema.pt") in failed.stderr and str(older / "state.json") in failed.stderr
