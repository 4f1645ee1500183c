"""DeepSpeed's CPU communication op (`deepspeed_shm_comm`), built once for the test cluster's jobs.

Every CPU rank JIT-loads this op through torch's extension builder, which runs `ninja` in
TORCH_EXTENSIONS_DIR under a `lock` file. Three things made jobs slow or hang when they shared the
user's cache (~/.cache/torch_extensions):
- a `lock` left by a killed build makes every later process wait for it forever;
- the jobs run with the venv activated, so they use the venv's ninja (1.13) while most other runs use
  /usr/bin/ninja (1.11): the two hash command lines differently, so each sees the other's build as
  out of date and recompiles (about 40 s, more on a loaded machine), inside a running job;
- two ranks starting at once both wait on one build.
So the tests build the op once, before any job starts, in a private folder, with the PATH the jobs
will have, seeded from the tests' own cache (never the shared one, never a lock), and publish the
result back to that cache: a fresh machine compiles once, later sessions find nothing to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

OP = "deepspeed_shm_comm"
CACHE = Path.home() / ".cache" / "cxrlt-tests" / "torch_extensions"
BUILD = (
    "from deepspeed.accelerator import get_accelerator; "
    "get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
)
NO_LOCK = shutil.ignore_patterns("lock", ".ninja_lock")


def prepare(folder: Path, venv: Path) -> None:
    """Build the op into `folder` and point this process (and so the jobs it submits) at it."""
    if (CACHE / OP / f"{OP}.so").is_file():
        shutil.copytree(CACHE, folder, ignore=NO_LOCK, dirs_exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": str(folder),
        "DS_ACCELERATOR": "cpu",
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"building {OP} failed:\n{done.stderr[-3000:]}")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(folder)
    _publish(folder)


def _publish(folder: Path) -> None:
    """Replace the tests' cache with this build (copy beside it, then rename: readers never see half)."""
    staged = CACHE.with_name(f"{CACHE.name}.{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(folder, staged, ignore=NO_LOCK)
    old = CACHE.with_name(f"{CACHE.name}.old.{os.getpid()}")
    if CACHE.exists():
        CACHE.rename(old)
    staged.rename(CACHE)
    shutil.rmtree(old, ignore_errors=True)
