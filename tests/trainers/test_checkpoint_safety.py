"""--resume never runs code pickled into a checkpoint (#16 item 11): every `.pt` of a training checkpoint,
DeepSpeed's included, loads weights-only; a planted pickle is refused with a message naming its file."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli import cxrlt_forked
from tests.trainers.conftest import train_args
from trainers.checkpointing import DEEPSPEED_GLOBALS, Checkpointer, DamagedCheckpoint, load_weights_only

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]


class Planted:
    """Unpickling this touches `marker`: the stand-in for code an attacker plants in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def plant(path: Path, marker: Path) -> None:
    """Rewrite `path` as its own payload plus a Planted object: a whole zip with valid CRCs, loadable
    by a careless `torch.load(weights_only=False)`, which would run the payload."""
    payload = load_weights_only(path, DEEPSPEED_GLOBALS)
    torch.save({**payload, "extra": Planted(marker)}, path)


def test_the_planted_payload_runs_under_an_unsafe_load_and_is_refused_by_a_safe_one(tmp_path):
    path, marker = tmp_path / "rng-0.pt", tmp_path / "pwned"
    torch.save({"cpu": torch.get_rng_state()}, path)
    plant(path, marker)
    torch.load(path, weights_only=False)  # what DeepSpeed's stock load does: the payload runs
    assert marker.exists()
    marker.unlink()

    folder = tmp_path / "checkpoints" / "step-00000001"
    folder.mkdir(parents=True)
    path.rename(folder / "rng-0.pt")
    with pytest.raises(DamagedCheckpoint, match=re.escape(str(folder / "rng-0.pt"))) as refused:
        Checkpointer(tmp_path, keep_last=2, rank=0).restore_rng(folder)
    assert "Unsupported global" in str(refused.value) and not marker.exists()


def test_resume_refuses_a_planted_pickle_in_each_checkpoint_file_naming_it(starter64, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    args = train_args(
        starter64,
        out,
        "deepspeed.zero_stage=2",  # so a checkpoint has a ZeRO optimizer file too
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=3",
        "schedule.epochs=1",
        "data.steps_per_epoch=3",
    )
    first = cxrlt_forked(*args, "--nproc", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    steps = [out / "checkpoints" / f"step-{n:08d}" for n in (1, 2, 3)]
    planted = [
        steps[2] / "mp_rank_00_model_states.pt",
        steps[1] / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        steps[0] / "ema.pt",
    ]
    for path in planted:
        plant(path, marker)
    (out / "result.json").unlink()  # as if killed after its last checkpoint

    resumed = cxrlt_forked(*args, "--nproc", "1", "--resume", cwd=tmp_path)
    assert not marker.exists()
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert "no kept checkpoint loads" in resumed.stderr and "Traceback" not in resumed.stderr
    for path in planted:
        assert f"{path} pickles code or objects, not only weights" in resumed.stderr


# A real DeepSpeed ZeRO-2 engine, built by the trainer's own code, in a process of its own (it joins a
# process group). It loads through Checkpointer.load directly, past check_files' static scan, so the
# planted files reach DeepSpeed's load_checkpoint itself.
_ENGINE_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from tests.trainers.test_checkpoint_safety import plant
from trainers import distributed
from trainers.checkpointing import Checkpointer, DamagedCheckpoint, TrainState
from trainers.config import DeepSpeedConfig, OptimConfig
from trainers.engine import build_engine

work = Path(sys.argv[1])
ctx = distributed.init()
torch.manual_seed(0)
engine, _ = build_engine(torch.nn.Linear(4, 2), OptimConfig(), DeepSpeedConfig(zero_stage=2), 1, 1, 10, ctx.device)
loss = engine(torch.randn(1, 4)).sum()
engine.backward(loss)
engine.step()
saved = {k: v.clone() for k, v in engine.module.state_dict().items()}
checkpointer = Checkpointer(work, keep_last=2, rank=0)
folder = checkpointer.save(engine, TrainState(global_step=1), None, "hash")
results = {}
for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
    genuine = (folder / name).read_bytes()
    plant(folder / name, work / "pwned")
    try:
        checkpointer.load(folder, engine, None, "hash")
        results[name] = "loaded"
    except DamagedCheckpoint as e:
        results[name] = str(e)
    (folder / name).write_bytes(genuine)
with torch.no_grad():
    for p in engine.module.parameters():
        p.zero_()
checkpointer.load(folder, engine, None, "hash")
results["restored"] = all(torch.equal(v, engine.module.state_dict()[k]) for k, v in saved.items())
print(json.dumps(results))
distributed.shutdown()
"""


def test_deepspeed_load_checkpoint_itself_loads_weights_only(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _ENGINE_SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert not (tmp_path / "pwned").exists()
    folder = tmp_path / "checkpoints" / "step-00000001"
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        assert results[name].startswith(f"{folder / name} does not load as plain weights"), results[name]
        assert "Unsupported global" in results[name]
    assert results["restored"] is True
