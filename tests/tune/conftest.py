"""Fixtures for the tune tests: the starter shards (shared with the trainer tests) and the test study."""

from __future__ import annotations

from pathlib import Path

from tests.trainers.conftest import starter64  # noqa: F401  (the session fixture, reused)

REPO = Path(__file__).resolve().parents[2]
TEST_STUDY = Path(__file__).resolve().parent / "tune-test.toml"
BASE = REPO / "configs" / "train-starter-tiny.toml"


def tune_args(shards: Path, study_dir: Path, *overrides: str) -> list[str]:
    """`cxrlt tune` arguments for the test study on `shards`, writing into `study_dir`."""
    sets = [f"base={BASE}", f"train.data.shards={shards}", f"run.out_dir={study_dir}", *overrides]
    return ["tune", str(TEST_STUDY), *[a for s in sets for a in ("--set", s)]]
