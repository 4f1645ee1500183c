"""Training/evaluation readers: rank x worker partition, fixed steps, exactly-once eval, determinism,
repeat-factor sampling and synthetic mixing, and studies with more views than the model's slots (a
seeded subset in training, every view in chunks in evaluation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrlt.data.partition import distributed_context, slot_for
from cxrlt.data.readers import EvalReader, ReaderConfig, TrainReader, make_loader
from cxrlt.data.samplers import class_repeat_factors, sample_repeats
from cxrlt.data.transforms import TransformConfig
from tests.multiview import VIEW_COUNTS, build_multiview_shards, study_id

TINY = TransformConfig(size=24)


def _ids(batches):
    return [i for batch in batches for i in batch["id"]]


def test_train_two_ranks_two_workers_disjoint_and_equal_steps(starter_shards):
    config = ReaderConfig(batch_size=8, shuffle_buffer=16, steps_per_epoch=5, transform=TINY)
    seen, steps = [], []
    for rank in (0, 1):
        reader = TrainReader(starter_shards, config, rank=rank, world_size=2)
        batches = list(make_loader(reader, num_workers=2))
        steps.append(len(batches))
        assert all(b["image"].shape == (8, 1, 24, 24) and b["labels"].shape == (8, 14) for b in batches)
        seen.append(set(_ids(batches)))
    assert steps == [5, 5]
    assert not seen[0] & seen[1]


def test_slots_of_train_reader_never_share_a_sample(starter_shards):
    """Each of the 4 (rank, worker) slots, read in-process, draws from its own shard share."""
    config = ReaderConfig(batch_size=4, shuffle_buffer=8, steps_per_epoch=6, transform=TINY)
    per_slot = []
    for rank in (0, 1):
        reader = TrainReader(starter_shards, config, rank=rank, world_size=2)
        for worker in (0, 1):
            slot = slot_for(len(reader.real.entries), rank, 2, worker, 2)
            ids = {meta["image_id"] for shard in slot.shards for _, meta, _ in reader.real.read(shard, slot)}
            per_slot.append(ids)
    assert sum(len(s) for s in per_slot) == len(set().union(*per_slot)) == reader.real.num_samples


def test_train_reader_is_deterministic_per_epoch(starter_shards):
    config = ReaderConfig(batch_size=6, shuffle_buffer=12, steps_per_epoch=3, transform=TINY)

    def run(epoch):
        reader = TrainReader(starter_shards, config, rank=0, world_size=1)
        reader.set_epoch(epoch)
        return list(reader)

    a, b, c = run(0), run(0), run(1)
    assert _ids(a) == _ids(b) and all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert _ids(a) != _ids(c)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_every_sample_exactly_once_across_ranks_and_workers(starter_shards, num_workers):
    config = ReaderConfig(split="train", batch_size=16, transform=TINY)
    indices, ids = [], []
    for rank in (0, 1):
        reader = EvalReader(starter_shards, config, rank=rank, world_size=2)
        batches = list(make_loader(reader, num_workers=num_workers))
        got = [int(i) for b in batches for i in b["index"]]
        assert len(got) == reader.num_samples(num_workers)
        indices += got
        ids += _ids(batches)
    total = reader.split.num_samples
    assert sorted(indices) == list(range(total)) and len(set(ids)) == total


def test_eval_order_is_the_index_order_on_one_reader(starter_shards):
    reader = EvalReader(starter_shards, ReaderConfig(split="dev", batch_size=7, transform=TINY), rank=0, world_size=1)
    assert [int(i) for b in reader for i in b["index"]] == list(range(reader.split.num_samples))


def test_rank_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed_context() == (1, 3)
    assert distributed_context(0, 2) == (0, 2)


def test_repeat_factors_oversample_tail_classes(starter_shards):
    from cxrlt.data.shardset import read_index

    index = read_index(starter_shards)
    factors = class_repeat_factors(index.split_class_counts["train"], index.classes, index.splits["train"], 0.2)
    hernia, infiltration = index.classes.index("Hernia"), index.classes.index("Infiltration")
    assert factors[hernia] > 2.0 and factors[infiltration] == 1.0
    rng = np.random.default_rng(0)
    labels = np.zeros(len(index.classes), dtype=np.float32)
    labels[hernia] = 1.0
    assert np.mean([sample_repeats(labels, factors, rng) for _ in range(2000)]) == pytest.approx(
        factors[hernia], rel=0.05
    )

    config = ReaderConfig(batch_size=16, shuffle_buffer=64, steps_per_epoch=12, transform=TINY)
    plain = TrainReader(starter_shards, config, rank=0, world_size=1)
    resampled = TrainReader(
        starter_shards, ReaderConfig(**{**config.__dict__, "repeat_threshold": 0.2}), rank=0, world_size=1
    )

    def hernia_share(reader):
        labels = torch.cat([b["labels"] for b in reader])
        return float((labels[:, hernia] == 1).float().mean())

    assert hernia_share(resampled) > 1.5 * hernia_share(plain)


def test_synthetic_samples_mixed_at_ratio(starter_shards, tmp_path):
    import io

    # a synthetic set: the dev shards re-flagged synthetic, indexed as that set's train split
    import tarfile

    from cxrlt.data.shardset import read_index, write_index

    index = read_index(starter_shards)
    entry = index.shards_for("dev")[0]
    with tarfile.open(starter_shards / entry.file) as src, tarfile.open(tmp_path / "train-000000.tar", "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith(".json"):
                data = json.dumps({**json.loads(data), "synthetic": True, "split": "train"}).encode()
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    index.shards = [type(entry)("train-000000.tar", "train", entry.num_samples)]
    index.splits = {"train": entry.num_samples}
    write_index(tmp_path, index)
    config = ReaderConfig(batch_size=16, shuffle_buffer=32, steps_per_epoch=20, synthetic_ratio=0.3, transform=TINY)
    reader = TrainReader(starter_shards, config, synthetic=tmp_path, rank=0, world_size=1)
    share = float(torch.cat([b["synthetic"] for b in reader]).float().mean())
    assert 0.2 < share < 0.4


def test_tar_reader_matches_webdataset_and_survives_truncation(starter_shards, tmp_path, caplog):
    import webdataset as wds

    from cxrlt.data.tarstream import tar_samples

    shard = str(sorted(starter_shards.glob("train-*.tar"))[0])
    ours = list(tar_samples(shard))
    theirs = list(wds.tarfile_samples([{"url": shard}]))
    assert [(s["__key__"], s["json"], s["img.jpg"]) for s in ours] == [
        (s["__key__"], s["json"], s["img.jpg"]) for s in theirs
    ]
    with open(shard, "rb") as stream:
        data = stream.read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    with caplog.at_level("WARNING", logger="cxrlt.data"):
        partial = list(tar_samples(str(cut)))
    assert 0 < len(partial) < len(ours) and "truncated" in caplog.text
    assert [s["__key__"] for s in partial] == [s["__key__"] for s in ours[: len(partial)]]


# Studies with more views than the model's slots (shards keep every view; tests/multiview.py).


@pytest.fixture(scope="module")
def multiview_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiview")
    build_multiview_shards(out)
    return out


def _stored_ids(shards, split):
    reader = EvalReader(shards, ReaderConfig(level="study", split=split, max_views=4), rank=0, world_size=1)
    slot = slot_for(len(reader.split.entries), 0, 1, 0, 1)
    return {meta["study_id"]: meta["image_ids"] for s in slot.shards for _, meta, _ in reader.split.read(s, slot)}


def test_study_shards_keep_every_view_unless_capped(multiview_shards, tmp_path):
    from cxrlt.data.shardset import read_index

    assert read_index(multiview_shards).views_dropped == 0
    stored = _stored_ids(multiview_shards, "train")
    assert {k: len(v) for k, v in stored.items()} == {study_id("train", s): n for s, n in enumerate(VIEW_COUNTS)}
    six = stored[study_id("train", 0)]
    assert six[:2] == ["train0-img1", "train0-img3"]  # frontal (PA, AP) first, then by view and id
    capped = build_multiview_shards(tmp_path, max_views=4)
    assert capped.views_dropped == 2 * ((6 - 4) + (5 - 4))  # train and dev each drop 2 + 1
    assert _stored_ids(tmp_path, "train")[study_id("train", 0)] == six[:4]


def test_train_reader_draws_a_seeded_view_subset_of_a_large_study(multiview_shards):
    stored = _stored_ids(multiview_shards, "train")
    config = ReaderConfig(level="study", batch_size=3, max_views=4, shuffle_buffer=4, steps_per_epoch=8, transform=TINY)

    def draws(epoch):
        reader = TrainReader(multiview_shards, config, rank=0, world_size=1)
        reader.set_epoch(epoch)
        picked = []
        for batch in reader:
            assert batch["images"].shape == (3, 4, 1, 24, 24) and batch["view_mask"].shape == (3, 4)
            for sid, ids, mask in zip(batch["id"], batch["image_ids"], batch["view_mask"].tolist()):
                views = [i for i, on in zip(ids, mask) if on]
                assert 1 <= len(views) <= 4 and sum(mask) == len(views)
                full = stored[sid]
                if len(full) <= 4:
                    assert views == full  # small studies unchanged
                else:
                    assert views == [i for i in full if i in views] and len(views) == 4  # stored order kept
                picked.append((sid, tuple(views)))
        return picked

    epoch0, again, epoch1, epoch2 = draws(0), draws(0), draws(1), draws(2)
    assert epoch0 == again  # an epoch replays exactly (exact resume)
    large = [study_id("train", 0), study_id("train", 3)]
    subsets = {views for sid, views in epoch0 + epoch1 + epoch2 if sid in large}
    assert len(subsets) > 2  # a fresh subset per draw, varying across epochs
    assert [v for s, v in epoch0 if s in large] != [v for s, v in epoch1 if s in large]


def test_view_chunks_are_consecutive_and_balanced():
    from cxrlt.data.decoding import view_chunks

    assert view_chunks(4, 4) == [(0, 4)]
    assert view_chunks(1, 4) == [(0, 1)]
    assert view_chunks(5, 4) == [(0, 3), (3, 5)]
    assert view_chunks(6, 4) == [(0, 3), (3, 6)]
    assert view_chunks(11, 4) == [(0, 4), (4, 8), (8, 11)]
    assert view_chunks(9, 1) == [(k, k + 1) for k in range(9)]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_eval_reader_scores_every_view_in_chunks(multiview_shards, batch_size):
    stored = _stored_ids(multiview_shards, "dev")
    config = ReaderConfig(level="study", split="dev", batch_size=batch_size, max_views=4, transform=TINY)
    reader = EvalReader(multiview_shards, config, rank=0, world_size=1)
    items = [{k: v[i] for k, v in b.items()} for b in reader for i in range(len(b["id"]))]
    by_study: dict[str, list] = {}
    for item in items:
        views = [i for i, on in zip(item["image_ids"], item["view_mask"].tolist()) if on]
        assert 1 <= len(views) <= 4
        by_study.setdefault(item["id"], []).append((int(item["index"]), int(item["chunk"]), views))
    sizes = {6: [3, 3], 5: [3, 2]}
    for s, n in enumerate(VIEW_COUNTS):
        chunks = by_study[study_id("dev", s)]
        assert len({index for index, _, _ in chunks}) == 1  # one sample, one index
        assert [c for _, c, _ in chunks] == list(range(len(chunks)))
        assert [len(v) for _, _, v in chunks] == sizes.get(n, [n])
        assert [i for _, _, v in chunks for i in v] == stored[study_id("dev", s)]  # every view, stored order
    assert len(items) == len(VIEW_COUNTS) + 2 and reader.num_samples(0) == len(VIEW_COUNTS)
