"""Shard writer: deterministic output, resume after interruption, no partial shard left looking complete."""

from __future__ import annotations

import hashlib

import pytest

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.images import FileLoader
from cxrlt.data.sources.chexpert import read_chexpert
from cxrlt.data.writer import WriterOptions
from cxrlt.errors import InputError
from cxrlt.labels import CHEXPERT_14


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


class InterruptAfter:
    """A loader that stops the run (as Ctrl-C would) after `limit` images."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls = 0

    def __call__(self, image_id: str, path: str | None) -> bytes:
        self.calls += 1
        if self.calls > self.limit:
            raise KeyboardInterrupt
        return FileLoader()(image_id, path)


def _shard(chexpert, out, workers=1, loader=None, seed=0):
    table_path, root, _ = chexpert
    options = WriterOptions(max_size=40, samples_per_shard=6, workers=workers)
    return build_shards(
        read_chexpert(table_path, root, CHEXPERT_14), CHEXPERT_14, out, BuildOptions(seed=seed), options, loader
    )


def test_same_input_gives_identical_shards_with_any_worker_count(chexpert, tmp_path):
    a = _shard(chexpert, tmp_path / "a", workers=1)
    b = _shard(chexpert, tmp_path / "b", workers=2)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b") and len(_digests(tmp_path / "a")) >= 4
    assert a.plan_hash == b.plan_hash and a.class_counts == b.class_counts
    c = _shard(chexpert, tmp_path / "c", seed=1)
    assert c.plan_hash != a.plan_hash


def test_interrupted_run_resumes_keeping_completed_shards(chexpert, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _shard(chexpert, out, loader=InterruptAfter(15))
    done = _digests(out)
    assert 1 <= len(done) <= 2  # the shards finished before the interrupt
    assert not (out / "_index.json").exists()
    assert not list(out.glob(".*.tmp"))  # the shard being written was removed, not left half-written
    mtimes = {name: (out / name).stat().st_mtime_ns for name in done}
    resumed_loader = InterruptAfter(10_000)
    index = _shard(chexpert, out, loader=resumed_loader)
    assert {name: (out / name).stat().st_mtime_ns for name in done} == mtimes  # kept, not rewritten
    assert resumed_loader.calls == index.num_samples - 6 * len(done)
    fresh = _shard(chexpert, tmp_path / "fresh")
    assert _digests(out) == _digests(tmp_path / "fresh")
    assert index.to_json().replace(str(out), "") == fresh.to_json().replace(str(tmp_path / "fresh"), "")


def test_stale_partial_shard_is_cleared_and_foreign_run_refused(chexpert, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".train-000000.tar.abc123.tmp").write_bytes(b"half a shard")
    _shard(chexpert, out)
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(InputError, match="holds shards of a different input or options"):
        _shard(chexpert, out, seed=3)
