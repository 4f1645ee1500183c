"""Damaged shards (#16 A): evaluation reads a split whole or fails naming the shard and the member;
training skips damaged samples, counts them per shard and fails past data.max_bad_fraction, keeping
its fixed step count."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from cxrlt.data.readers import EvalReader, ReaderConfig, TrainReader, make_loader
from cxrlt.data.shardset import read_index
from cxrlt.data.transforms import TransformConfig
from cxrlt.errors import InputError

TINY = TransformConfig(size=24)


@pytest.fixture
def shards(starter_shards, tmp_path):
    """A fresh copy to damage."""
    return Path(shutil.copytree(starter_shards, tmp_path / "shards"))


def _first(shards: Path, split: str = "train") -> tuple[Path, int]:
    entry = read_index(shards).shards_for(split)[0]
    return shards / entry.file, entry.num_samples


def _members(tar: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar) as t:
        return t.getmembers()


def _overwrite(tar: Path, member: tarfile.TarInfo, data: bytes) -> None:
    """Replace the start of a member's bytes in place (same length: the tar itself stays valid)."""
    with open(tar, "r+b") as f:
        f.seek(member.offset_data)
        f.write(data[: member.size])


def _damage_every_train_shard(shards: Path, damage) -> list[Path]:
    """The training tests damage every shard, so whichever the resampler draws is damaged."""
    tars = [shards / e.file for e in read_index(shards).shards_for("train")]
    for tar in tars:
        damage(tar)
    return tars


def _bad_first_image(tar: Path) -> None:
    image = next(m for m in _members(tar) if m.name.endswith((".img.jpg", ".img.png")))
    _overwrite(tar, image, b"\0" * 64)


def _eval(shards: Path, split: str = "train") -> int:
    reader = EvalReader(shards, ReaderConfig(split=split, batch_size=16, transform=TINY), rank=0, world_size=1)
    return sum(len(b["id"]) for b in reader)


def _train(shards: Path, max_bad_fraction: float, steps: int = 6, num_workers: int = 0) -> list[dict]:
    config = ReaderConfig(
        batch_size=8, shuffle_buffer=16, steps_per_epoch=steps, max_bad_fraction=max_bad_fraction, transform=TINY
    )
    return list(make_loader(TrainReader(shards, config, rank=0, world_size=1), num_workers))


def test_clean_split_reads_whole(starter_shards):
    assert _eval(starter_shards) == read_index(starter_shards).splits["train"]


def test_eval_truncated_tar_names_shard_and_member(shards):
    tar, _ = _first(shards)
    image = [m for m in _members(tar) if m.name.endswith((".img.jpg", ".img.png"))][5]
    tar.write_bytes(tar.read_bytes()[: image.offset_data + image.size // 2])
    with pytest.raises(InputError, match=rf"{tar.name}: member {image.name} truncated"):
        _eval(shards)


def test_eval_tar_cut_at_a_member_boundary_is_short_not_silent(shards):
    tar, expected = _first(shards)
    members = _members(tar)
    cut = members[len(members) // 2]  # a header boundary: the tar just ends early
    tar.write_bytes(tar.read_bytes()[: cut.offset])
    with pytest.raises(InputError, match=rf"{tar.name}: \d+ of the {expected} samples .* ends after sample"):
        _eval(shards)


def test_eval_bad_image_is_an_error_not_a_dropped_row(shards):
    tar, _ = _first(shards)
    image = next(m for m in _members(tar) if m.name.endswith(".img.jpg") or m.name.endswith(".img.png"))
    _overwrite(tar, image, b"\0" * 64)
    with pytest.raises(InputError, match=rf"{tar.name}: member {image.name}: corrupt"):
        _eval(shards)


def test_eval_broken_json_member_names_shard_and_member(shards):
    tar, _ = _first(shards)
    meta = next(m for m in _members(tar) if m.name.endswith(".json"))
    _overwrite(tar, meta, b"{not json" + b"!" * 64)
    with pytest.raises(InputError, match=rf"{tar.name}: member {meta.name}: not valid sample json"):
        _eval(shards)


def test_eval_error_through_a_worker_keeps_the_one_line_message(shards):
    tar, _ = _first(shards)
    meta = next(m for m in _members(tar) if m.name.endswith(".json"))
    _overwrite(tar, meta, b"[" * 64)
    reader = EvalReader(shards, ReaderConfig(split="train", batch_size=16, transform=TINY), rank=0, world_size=1)
    with pytest.raises(InputError) as caught:
        list(make_loader(reader, num_workers=1))
    assert str(caught.value).startswith(f"{tar}: member {meta.name}") and "Traceback" not in str(caught.value)


def test_train_truncated_tar_fails_past_the_threshold_naming_count_and_shard(shards):
    tars = _damage_every_train_shard(shards, lambda tar: tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3]))
    names = "|".join(t.name for t in tars)
    with pytest.raises(
        InputError,
        match=rf"\d+ of \d+ samples read in epoch 0 .* max_bad_fraction=0.01; damaged shards: .*({names}) \(\d+\)",
    ):
        _train(shards, 0.01)


def test_train_within_the_threshold_keeps_its_fixed_steps_and_warns(shards, caplog):
    _damage_every_train_shard(shards, _bad_first_image)
    with caplog.at_level("WARNING", logger="cxrlt.data"):
        batches = _train(shards, 0.5, steps=20)
    assert len(batches) == 20 and all(len(b["id"]) == 8 for b in batches)
    assert "skipped" in caplog.text and "within max_bad_fraction=0.5" in caplog.text


def test_train_zero_threshold_fails_on_one_bad_image(shards):
    _damage_every_train_shard(shards, _bad_first_image)
    with pytest.raises(InputError, match=r"max_bad_fraction=0.0; damaged shards: .*train-\d+.tar \(\d+\)"):
        _train(shards, 0.0, steps=20)


def _bad_first_json(tar: Path) -> None:
    meta = next(m for m in _members(tar) if m.name.endswith(".json"))
    _overwrite(tar, meta, b"{" * 64)


def test_train_broken_json_is_skipped_and_counted(shards):
    _damage_every_train_shard(shards, _bad_first_json)
    assert len(_train(shards, 0.5, steps=20)) == 20
    with pytest.raises(InputError, match=r"damaged shards: .*train-\d+.tar"):
        _train(shards, 0.0, steps=20)


def test_train_all_damaged_fails_instead_of_spinning(shards):
    _damage_every_train_shard(shards, lambda tar: tar.write_bytes(b""))
    with pytest.raises(InputError, match="were damaged and skipped"):
        _train(shards, 0.5, steps=3)
