"""Shared fixtures for the trainer tests: the embedded starter sharded at 64 px and one trained run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.sources.starter import read_starter
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import get_schema
from tests.cli import cxrlt

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train-starter-tiny.toml"
# The reference run: periodic checkpoints to resume from, and dropout so the RNG state matters.
REFERENCE_OVERRIDES = ("checkpoint.every_steps=2", "model.head.dropout=0.2")


def train_args(shards: Path, out_dir: Path, *overrides: str) -> list[str]:
    """`cxrlt train` arguments for the tiny starter config writing into `out_dir`."""
    sets = [f"data.shards={shards}", f"run.out_dir={out_dir}", *overrides]
    return ["train", str(CONFIG), *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="session")
def starter64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 621 real NIH images at 64 px: train 515 (6 shards), dev 54, test 52."""
    out = tmp_path_factory.mktemp("starter64")
    schema = get_schema("nih-14")
    build_shards(read_starter(schema), schema, out, BuildOptions(), WriterOptions(max_size=64, samples_per_shard=100))
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, starter64: Path) -> Path:
    """A finished 2-rank ZeRO-0 run (2 epochs x 8 steps) whose folder later tests read."""
    work = tmp_path_factory.mktemp("trained")
    result = cxrlt(*train_args(starter64, work / "run", *REFERENCE_OVERRIDES), "--nproc", "2", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run"
