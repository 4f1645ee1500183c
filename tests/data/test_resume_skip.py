"""Resuming an epoch without replay (#20): the training reader started at batch k yields exactly the
uninterrupted epoch's batches k, k+1, ... (same samples, same augmented pixels, same study views)
without decoding, or even reading, the images of the samples it skips; and reduced-size JPEG decoding
(DCT scaling) gives tensors of the same size as a full decode, used only when the training size is at
most half the stored size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrlt.data import decoding
from cxrlt.data.readers import EvalReader, ReaderConfig, TrainReader, make_loader
from cxrlt.data.tarstream import MemberRef, tar_samples
from cxrlt.data.transforms import TransformConfig
from tests.multiview import build_multiview_shards

STEPS = 9


def _epoch(shards: Path, config: ReaderConfig, start: int = 0, num_workers: int = 0) -> list[dict]:
    reader = TrainReader(shards, config, rank=0, world_size=1)
    reader.set_epoch(1, start=start)
    assert len(reader) == STEPS - start
    return list(make_loader(reader, num_workers))


def _same_batches(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a["id"] == b["id"]
        for key in ("image", "images", "labels", "view_mask"):
            if key in a:
                assert torch.equal(a[key], b[key]), key
        if "image_ids" in a:
            assert a["image_ids"] == b["image_ids"]


class _Counts:
    """Counts images decoded and tar members read after being skipped over."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded = 0
        self.deferred_reads = 0
        open_gray, read = decoding.open_gray, MemberRef.read

        def counted_open_gray(data: bytes, draft_size: int | None = None):
            self.decoded += 1
            return open_gray(data, draft_size)

        def counted_read(ref: MemberRef) -> bytes:
            self.deferred_reads += 1
            return read(ref)

        monkeypatch.setattr(decoding, "open_gray", counted_open_gray)
        monkeypatch.setattr(MemberRef, "read", counted_read)


def test_resumed_epoch_equals_the_uninterrupted_one_and_decodes_only_what_it_yields(starter_shards, monkeypatch):
    # Repeat-factor sampling makes the stream depend on every skipped sample's labels (its json).
    config = ReaderConfig(
        batch_size=4, shuffle_buffer=16, steps_per_epoch=STEPS, repeat_threshold=0.2, transform=TransformConfig(size=24)
    )
    counts = _Counts(monkeypatch)
    full = _epoch(starter_shards, config)
    assert counts.decoded == STEPS * 4 and counts.deferred_reads == 0
    for start in (1, 5, 8):
        counts.decoded = counts.deferred_reads = 0
        resumed = _epoch(starter_shards, config, start)
        _same_batches(resumed, full[start:])
        assert counts.decoded == (STEPS - start) * 4  # the skipped samples were never decoded
        # Their images were not read either: only those still in the shuffle buffer when the skip
        # ended are read, when drawn.
        assert 0 < counts.deferred_reads <= config.shuffle_buffer


@pytest.mark.parametrize("start", [3, 4])
def test_resume_with_two_workers_keeps_the_batch_order(starter_shards, start):
    """Batches alternate between the two workers; resuming at an odd batch starts with worker 1's."""
    config = ReaderConfig(batch_size=4, shuffle_buffer=8, steps_per_epoch=STEPS, transform=TransformConfig(size=24))
    full = _epoch(starter_shards, config, num_workers=2)
    _same_batches(_epoch(starter_shards, config, start, num_workers=2), full[start:])


def test_resumed_study_epoch_draws_the_same_views(tmp_path):
    build_multiview_shards(tmp_path)
    config = ReaderConfig(
        level="study",
        batch_size=2,
        max_views=4,
        shuffle_buffer=4,
        steps_per_epoch=STEPS,
        transform=TransformConfig(size=24),
    )
    full = _epoch(tmp_path, config)
    for start in (2, 7):
        _same_batches(_epoch(tmp_path, config, start), full[start:])


def test_lazy_tar_members_are_left_unread_and_read_back_equal(starter_shards):
    shard = str(sorted(starter_shards.glob("train-*.tar"))[0])
    eager = list(tar_samples(shard))
    lazy = list(tar_samples(shard, lazy=lambda name: name.endswith(".jpg")))
    assert [s["__key__"] for s in lazy] == [s["__key__"] for s in eager]
    assert all(isinstance(s["img.jpg"], MemberRef) and isinstance(s["json"], bytes) for s in lazy)
    assert [s["img.jpg"].read() for s in lazy] == [s["img.jpg"] for s in eager]
    assert [s["json"] for s in lazy] == [s["json"] for s in eager]


@pytest.mark.parametrize("train", [True, False])
def test_reduced_decoding_keeps_the_tensor_size_and_applies_only_at_half_size(starter_shards, monkeypatch, train):
    """The starter shards store 32 px images: at 16 px (half) a JPEG decodes at 1/2 scale, at 24 px fully."""
    decoded_sizes: list[tuple[int, int]] = []
    open_gray = decoding.open_gray

    def spy(data: bytes, draft_size: int | None = None):
        image = open_gray(data, draft_size)
        decoded_sizes.append(image.size)
        return image

    monkeypatch.setattr(decoding, "open_gray", spy)

    def read(size: int, reduced: bool) -> torch.Tensor:
        decoded_sizes.clear()
        transform = TransformConfig(size=size, reduced_decode=reduced)
        if train:
            config = ReaderConfig(batch_size=8, shuffle_buffer=8, steps_per_epoch=2, transform=transform)
            reader: torch.utils.data.IterableDataset = TrainReader(starter_shards, config, rank=0, world_size=1)
        else:
            reader = EvalReader(starter_shards, ReaderConfig(split="dev", batch_size=8, transform=transform), 0, 1)
        return torch.cat([b["image"] for b in reader])

    reduced = read(16, reduced=True)
    assert set(decoded_sizes) == {(16, 16)}
    full = read(16, reduced=False)
    assert set(decoded_sizes) == {(32, 32)}
    assert reduced.shape == full.shape and reduced.shape[1:] == (1, 16, 16)
    if not train:  # the same images, resampled differently: close but not bit-equal
        assert 0 < (reduced - full).abs().mean() < 0.15
    read(24, reduced=True)
    assert set(decoded_sizes) == {(32, 32)}  # 24 > 32 / 2: no reduced decode
