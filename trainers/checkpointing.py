"""Training checkpoints: written atomically, found again by `latest`, pruned to the newest few.

One checkpoint is a folder `checkpoints/step-<optimizer step>/` holding
- DeepSpeed's files (module, optimizer partitions per ZeRO rank, scheduler), written by every rank;
- `state.json`: the trainer's position (epoch, micro-step in the epoch, global step, best score, epochs
  without improvement, history) and the resolved config's hash;
- `ema.pt`: the EMA weights (rank 0; identical on every rank);
- `rng-<rank>.pt`: each rank's torch RNG states (dropout, stochastic depth). The data order needs no
  RNG state: the readers are seeded by (seed, epoch, rank, worker) and skip to the saved micro-step
  without decoding the batches before it (TrainReader.set_epoch).
All ranks write into `.tmp-step-<n>/`; after a barrier rank 0 renames it and rewrites `latest`, so a
run killed at any moment leaves only complete checkpoints visible.

Every file loads with `torch.load(weights_only=True)`, DeepSpeed's included: its own `load_checkpoint`
unpickles with `weights_only=False`, which runs whatever code a planted `.pt` carries, so `load` hands it
a checkpoint engine that loads weights-only, allowing just the three plain DeepSpeed classes its ZeRO
files hold (`DEEPSPEED_GLOBALS`). A file needing anything else is refused before its code can run and
counts as damaged, naming the file.

Resuming (`restore`) tries the checkpoint `latest` names, then the older kept ones, newest first. A
checkpoint whose files are damaged (a `.pt` that is not a whole zip or fails its CRC-32 check, which
`torch.load` does not do; a `.pt` that pickles anything but tensors and plain values; a `state.json`
that does not parse; DeepSpeed refusing it) is passed over with a warning naming the bad file; only
when none loads is it an InputError. Every rank checks the
same files, so all ranks fall back to the same checkpoint. A later save removes checkpoints newer
than itself (the abandoned damaged ones), so pruning keeps the good ones.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import sys
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from cxrlt.atomic import atomic_path, write_text_atomic
from cxrlt.errors import InputError
from trainers import distributed

STEP_DIR = re.compile(r"step-\d+")
LATEST = "latest"
STATE = "state.json"
EMA = "ema.pt"
# The only classes in DeepSpeed's checkpoint files for the configurations the trainer allows (ZeRO 0-2,
# DeepSpeed's fp16/bf16 modes off), as `torch.serialization.get_unsafe_globals_in_checkpoint` lists
# them: a ZeRO-1/2 optimizer file keeps its loss scaler, the stage as an enum and each parameter's
# (start, numel) slice. All three are rebuilt from plain values, so allowing them runs no file's code.
DEEPSPEED_GLOBALS: tuple[type, ...] = (LossScaler, ZeroStageEnum, fragment_address)
_REFUSAL = re.compile(r"WeightsUnpickler error: (.*?)(?:\. Please|\n|$)")


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


class DamagedCheckpoint(InputError):
    """A checkpoint folder with a damaged file; the message names the file."""


def load_weights_only(path: str | Path, allowed: Sequence[type] = (), map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` with the classes `allowed` besides torch's defaults, for
    this call only. A file that needs anything else (a planted pickle that would run code) is refused
    before that object is built: DamagedCheckpoint naming the file and what it asked for."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = _REFUSAL.search(str(e))
        reason = found.group(1) if found else str(e).splitlines()[0]
        raise DamagedCheckpoint(
            f"{path} does not load as plain weights ({reason}); training checkpoints hold only tensors and "
            "plain values, so it was refused unpickled"
        ) from None


class _WeightsOnlyCheckpointEngine:
    """DeepSpeed's checkpoint engine with `load` made weights-only; every other call goes to `inner`.

    All of DeepSpeed's reads in `engine.load_checkpoint` (module, optimizer partitions, scheduler) go
    through `engine.checkpoint_engine.load`, whose stock version uses `weights_only=False`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_weights_only(path, DEEPSPEED_GLOBALS, map_location)


@contextmanager
def _weights_only_loads(engine: Any) -> Iterator[None]:
    """Within the block, `engine` loads its checkpoint files weights-only; the engine's own checkpoint
    engine is put back after, so nothing outlives the load."""
    inner = engine.checkpoint_engine
    engine.checkpoint_engine = _WeightsOnlyCheckpointEngine(inner)
    try:
        yield
    finally:
        engine.checkpoint_engine = inner


def check_files(folder: Path, want_ema: bool) -> None:
    """Raise DamagedCheckpoint naming the first damaged file of a checkpoint folder."""
    try:
        payload = json.loads((folder / STATE).read_text(encoding="utf-8"))
        payload.pop("config_hash", None)
        TrainState(**payload)
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{folder / STATE} is missing") from None
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise DamagedCheckpoint(f"{folder / STATE} is damaged ({e})") from None
    if want_ema and not (folder / EMA).is_file():
        raise DamagedCheckpoint(f"{folder / EMA} is missing")
    weights = sorted(folder.rglob("*.pt"))
    if not any(p.name.endswith("model_states.pt") for p in weights):
        raise DamagedCheckpoint(f"{folder} has no DeepSpeed model states (*model_states.pt)")
    for path in weights:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise DamagedCheckpoint(f"{path} is truncated or damaged ({e})") from None
        if bad is not None:
            raise DamagedCheckpoint(f"{path} is damaged (record {bad} fails its CRC-32 check)")
        # A static read of the pickle's imports (nothing is unpickled). The weights-only loads refuse
        # such a file anyway, but only on the ranks that load it (`rng-<rank>.pt` on one); refusing it
        # here, where every rank reads every file, keeps all ranks on the same checkpoint.
        try:
            with torch.serialization.safe_globals(list(DEEPSPEED_GLOBALS)):
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (RuntimeError, ValueError) as e:
            raise DamagedCheckpoint(f"{path} is not a torch-saved file ({e})") from None
        if unsafe:
            raise DamagedCheckpoint(
                f"{path} pickles code or objects, not only weights ({', '.join(sorted(unsafe))}); refused unpickled"
            )


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

    def _steps(self) -> list[Path]:
        """Complete checkpoint folders, newest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name)), reverse=True)

    def exists(self) -> bool:
        """Whether the run has any checkpoint (or a `latest` pointer) to resume from."""
        return (self.root / LATEST).is_file() or bool(self._steps())

    def candidates(self) -> list[Path]:
        """The folder `latest` names, then the older kept ones, newest first; every kept one, newest
        first, when the pointer is missing, unreadable or names no folder."""
        folders = self._steps()
        try:
            named = self.root / (self.root / LATEST).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return folders
        if named not in folders:
            return folders
        return [named] + [p for p in folders if p.name < named.name]

    def restore(self, engine: Any, ema: torch.nn.Module | None, config_hash: str) -> tuple[TrainState, Path]:
        """Load the newest kept checkpoint that loads (see the module docstring): (state, its folder)."""
        folders = self.candidates()
        problems: list[str] = []
        for folder in folders:
            try:
                check_files(folder, ema is not None)
                state = self.load(folder, engine, ema, config_hash)
            except DamagedCheckpoint as e:
                problems.append(str(e))
                if self.rank == 0:
                    print(
                        f"warning: cannot resume from {folder.name}: {e}; trying the previous checkpoint",
                        file=sys.stderr,
                    )
                continue
            if problems and self.rank == 0:
                print(f"warning: resuming from the older checkpoint {folder.name}: {problems[0]}", file=sys.stderr)
            return state, folder
        if not folders:
            raise InputError(f"{self.root / LATEST} names no checkpoint folder that exists; start a new out_dir")
        raise InputError(f"{self.root}: no kept checkpoint loads ({'; '.join(problems)}); start a new out_dir")

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
        # Newer than `keep`: left by a run that resumed from an older checkpoint past damaged ones.
        for abandoned in (p for p in self._steps() if p.name > keep.name):
            shutil.rmtree(abandoned, ignore_errors=True)
        done = sorted(p for p in self._steps() if p != keep)
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
        try:
            with _weights_only_loads(engine):
                loaded, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name)
        except DamagedCheckpoint:
            raise
        except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
            raise DamagedCheckpoint(f"{folder}: DeepSpeed could not load it ({type(e).__name__}: {e})") from None
        if loaded is None:
            raise DamagedCheckpoint(f"{folder}: DeepSpeed could not load this checkpoint")
        if ema is not None:
            try:
                ema.load_state_dict(load_weights_only(folder / EMA))
            except DamagedCheckpoint:
                raise
            except (RuntimeError, OSError, EOFError, ValueError, KeyError) as e:
                raise DamagedCheckpoint(f"{folder / EMA} does not load ({type(e).__name__}: {e})") from None
        return TrainState(**payload)

    def restore_rng(self, folder: Path) -> None:
        """Set this rank's RNG as saved; call right before the first step after resuming, once the data
        loader is positioned (creating its iterator draws from the torch RNG)."""
        path = folder / f"rng-{self.rank}.pt"
        if not path.is_file():
            raise InputError(f"{path} is missing: resume with the same number of ranks as the saved run")
        _set_rng_state(load_weights_only(path))
