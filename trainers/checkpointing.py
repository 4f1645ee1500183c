"""Training checkpoints: written atomically, found again by `latest`, pruned to the newest few.

One checkpoint is a folder `checkpoints/step-<optimizer step>/` holding
- DeepSpeed's files (module, optimizer partitions per ZeRO rank, scheduler), written by every rank;
- `state.json`: the trainer's position (epoch, micro-step in the epoch, global step, best score, epochs
  without improvement, history) and the resolved config's hash;
- `ema.pt`: the EMA weights (rank 0; identical on every rank);
- `rng-<rank>.pt`: each rank's torch RNG states (dropout, stochastic depth). The data order needs no
  RNG state: the readers are seeded by (seed, epoch, rank, worker) and replay to the saved position.
All ranks write into `.tmp-step-<n>/`; after a barrier rank 0 renames it and rewrites `latest`, so a
run killed at any moment leaves only complete checkpoints visible. Everything except DeepSpeed's own
files loads with `weights_only=True`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxrlt.atomic import atomic_path, write_text_atomic
from cxrlt.errors import InputError
from trainers import distributed

LATEST = "latest"
STATE = "state.json"
EMA = "ema.pt"


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    finished: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores engine + trainer state under `run_dir/checkpoints`."""

    def __init__(self, run_dir: Path, keep_last: int, rank: int) -> None:
        self.root = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.rank = rank

    def latest(self) -> Path | None:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        folder = self.root / pointer.read_text(encoding="utf-8").strip()
        if not (folder / STATE).is_file():
            raise InputError(f"{pointer} names {folder.name}, which is not a complete checkpoint")
        return folder

    def save(self, engine: Any, state: TrainState, ema: torch.nn.Module | None, config_hash: str) -> Path:
        """`ema`: the averaged model itself (ModelEmaV3.module), or None."""
        tag = f"step-{state.global_step:08d}"
        tmp = self.root / f".tmp-{tag}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        distributed.barrier()
        engine.save_checkpoint(str(self.root), tag=tmp.name, save_latest=False)
        with atomic_path(tmp / f"rng-{self.rank}.pt") as path:
            torch.save(_rng_state(), path)
        if self.rank == 0:
            if ema is not None:
                with atomic_path(tmp / EMA) as path:
                    torch.save(ema.state_dict(), path)
            write_text_atomic(tmp / STATE, json.dumps({**asdict(state), "config_hash": config_hash}, indent=1))
        distributed.barrier()
        final = self.root / tag
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            write_text_atomic(self.root / LATEST, tag + "\n")
            self._prune(keep=final)
        distributed.barrier()
        return final

    def _prune(self, keep: Path) -> None:
        done = sorted(p for p in self.root.glob("step-*") if p.is_dir() and p != keep)
        for old in done[: max(0, len(done) - (self.keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, folder: Path, engine: Any, ema: torch.nn.Module | None, config_hash: str) -> TrainState:
        """Restore engine and EMA from `folder`; returns the trainer state. RNG comes later (`restore_rng`)."""
        payload = json.loads((folder / STATE).read_text(encoding="utf-8"))
        saved_hash = payload.pop("config_hash", None)
        if saved_hash != config_hash:
            raise InputError(
                f"{folder}: written by a different config (hash {saved_hash}, now {config_hash}); "
                "resume with the run's own config.toml or start a new out_dir"
            )
        loaded, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name)
        if loaded is None:
            raise InputError(f"{folder}: DeepSpeed could not load this checkpoint")
        if ema is not None:
            ema.load_state_dict(torch.load(folder / EMA, map_location="cpu", weights_only=True))
        return TrainState(**payload)

    def restore_rng(self, folder: Path) -> None:
        """Set this rank's RNG as saved; call right before the first step after resuming, once the data
        loader is positioned (creating its iterator draws from the torch RNG)."""
        path = folder / f"rng-{self.rank}.pt"
        if not path.is_file():
            raise InputError(f"{path} is missing: resume with the same number of ranks as the saved run")
        _set_rng_state(torch.load(path, map_location="cpu", weights_only=True))
