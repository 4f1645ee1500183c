"""Multi-source training reads (#18): two shard sets of different schemas in one training stream.

The primary set is the embedded NIH starter under NIH-14; the second holds some of the same images
sharded under CheXpert-14, so the run's union schema has classes each set lacks. A sample's set shows
in its labels: only NIH samples know "Infiltration", only CheXpert samples know "Normal" (CheXpert's
"No Finding"), which NIH-14 does not have.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlt.data import decoding
from cxrlt.data.multisource import (
    Source,
    TrainingSet,
    label_map,
    open_training_sets,
    run_schema,
    training_counts,
)
from cxrlt.data.readers import ReaderConfig, ShardSplit, TrainReader, make_loader
from cxrlt.data.samplers import mix
from cxrlt.data.shardset import ShardIndex, read_index
from cxrlt.data.transforms import TransformConfig
from cxrlt.labels import CHEXPERT_14, NIH_14
from cxrlt.models.losses import LossConfig, build_loss
from tests.starter import shard_starter

TINY = TransformConfig(size=24)
NIH_ONLY = ("Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis", "Pleural Thickening", "Hernia")
CHEXPERT_ONLY = ("Normal", "Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion", "Pleural Other", "Fracture")


@pytest.fixture(scope="module")
def chexpert_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 starter images sharded under CheXpert-14 at 32 px, 40 samples per shard."""
    return shard_starter(tmp_path_factory.mktemp("chexpert-shards"), CHEXPERT_14, 32, 40, images=240)


def _union(starter_shards: Path, chexpert_shards: Path):
    return run_schema("union", [read_index(starter_shards), read_index(chexpert_shards)])


def _columns(schema, names) -> list[int]:
    return [schema.classes.index(n) for n in names]


def test_union_schema_maps_each_set_by_name_and_never_invents_negatives(starter_shards, chexpert_shards):
    union = _union(starter_shards, chexpert_shards)
    # The primary's classes first, in the CXR-LT 2024 spelling; then CheXpert's new ones, in its order.
    assert union.classes[:14] == tuple(
        {"Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Thickening"}.get(c, c) for c in NIH_14.classes
    )
    assert union.classes[14:] == (*CHEXPERT_ONLY, "Support Devices")
    assert label_map(read_index(starter_shards), run_schema("", [read_index(starter_shards)])) is None

    split = ShardSplit(chexpert_shards, "train", union)
    labels = np.stack([labels for shard in range(len(split.entries)) for _, _, labels in _read(split, shard)])
    assert labels.shape == (split.num_samples, len(union))
    assert (labels[:, _columns(union, NIH_ONLY)] == -1).all()  # CheXpert never annotated them
    both = _columns(union, ("Cardiomegaly", "Pleural Effusion", "Atelectasis"))
    assert (labels[:, both] >= 0).all() and (labels[:, both] == 1).any()
    assert (labels[:, union.classes.index("Normal")] >= 0).all()


def _read(split: ShardSplit, shard: int):
    from cxrlt.data.partition import slot_for

    return split.read(shard, slot_for(len(split.entries), 0, 1, 0, 1))


def test_sources_are_drawn_at_their_ratios_with_unknowns_never_negative(starter_shards, chexpert_shards):
    union = _union(starter_shards, chexpert_shards)
    config = ReaderConfig(batch_size=16, shuffle_buffer=32, steps_per_epoch=40, transform=TINY)
    reader = TrainReader(
        starter_shards, config, rank=0, world_size=1, sources=[Source(chexpert_shards, 0.4)], schema=union
    )
    labels = torch.cat([b["labels"] for b in reader])
    assert labels.shape == (640, len(union)) and set(labels.unique().tolist()) <= {-1.0, 0.0, 1.0}
    from_chexpert = labels[:, union.classes.index("Normal")] >= 0
    from_nih = labels[:, union.classes.index("Infiltration")] >= 0
    assert bool((from_chexpert ^ from_nih).all())  # every sample comes from exactly one set
    assert abs(float(from_chexpert.float().mean()) - 0.4) < 0.08  # binomial sd 0.019 over 640 draws
    assert (labels[from_chexpert][:, _columns(union, NIH_ONLY)] == -1).all()
    assert (labels[from_nih][:, _columns(union, CHEXPERT_ONLY)] == -1).all()


def test_two_ranks_run_the_same_default_step_count(starter_shards, chexpert_shards):
    union = _union(starter_shards, chexpert_shards)
    config = ReaderConfig(batch_size=16, shuffle_buffer=16, transform=TINY)
    steps = []
    for rank in (0, 1):
        reader = TrainReader(
            starter_shards, config, rank=rank, world_size=2, sources=[Source(chexpert_shards, 0.4)], schema=union
        )
        # One expected pass over the primary's 515 training samples at its 0.6 share, over 2 ranks.
        assert reader.steps_per_epoch == math.ceil(515 / 0.6 / (16 * 2)) == 27
        batches = list(make_loader(reader))
        assert all(b["labels"].shape == (16, len(union)) for b in batches)
        steps.append(len(batches))
    assert steps == [27, 27]


def test_a_resumed_epoch_replays_every_sets_draws_without_decoding_the_skipped(
    starter_shards, chexpert_shards, monkeypatch
):
    union = _union(starter_shards, chexpert_shards)
    config = ReaderConfig(batch_size=4, shuffle_buffer=8, steps_per_epoch=8, repeat_threshold=0.2, transform=TINY)
    sources = [Source(chexpert_shards, 0.5)]
    decoded = []
    open_gray = decoding.open_gray

    def counted_open_gray(data: bytes, draft_size: int | None = None):
        decoded.append(1)
        return open_gray(data, draft_size)

    monkeypatch.setattr(decoding, "open_gray", counted_open_gray)

    def epoch(start: int) -> list[dict]:
        reader = TrainReader(starter_shards, config, rank=0, world_size=1, sources=sources, schema=union)
        reader.set_epoch(2, start)
        return list(make_loader(reader))

    full = epoch(0)
    for start in (3, 7):
        decoded.clear()
        resumed = epoch(start)
        assert len(decoded) == (8 - start) * 4  # the skipped samples of both sets were never decoded
        assert [b["id"] for b in resumed] == [b["id"] for b in full[start:]]
        for a, b in zip(resumed, full[start:]):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    from_chexpert = torch.cat([b["labels"] for b in full])[:, union.classes.index("Normal")] >= 0
    assert 0 < float(from_chexpert.float().mean()) < 1  # both sets are in the replayed epoch


def _index(classes: list[str], schema: str, samples: int, positives: dict, known: dict) -> ShardIndex:
    return ShardIndex(
        schema=schema,
        classes=classes,
        level="image",
        num_samples=samples,
        shards=[],
        splits={"train": samples},
        class_counts=positives,
        split_class_counts={"train": positives},
        sources=[],
        skipped=[],
        num_skipped=0,
        image_format="jpg",
        max_size=32,
        plan_hash="",
        split_known_counts={"train": known},
    )


def test_pooled_frequency_is_positives_over_known_labels_in_the_stream():
    nih = _index(["Effusion", "Hernia"], "nih-14", 100, {"Effusion": 10, "Hernia": 2}, {"Effusion": 100, "Hernia": 100})
    chexpert = _index(
        ["Pleural Effusion", "Support Devices"],
        "chexpert-14",
        400,
        {"Pleural Effusion": 100, "Support Devices": 0},
        {"Pleural Effusion": 400, "Support Devices": 0},  # never annotated
    )
    schema = run_schema("union", [nih, chexpert])
    assert schema.classes == ("Pleural Effusion", "Hernia", "Support Devices")
    counts = training_counts([TrainingSet(nih, "train", 0.5), TrainingSet(chexpert, "train", 0.5)], schema)
    # Each set gives half the draws: effusion is positive in 10 % of NIH draws and 25 % of CheXpert's.
    assert counts.total == 500 and counts.positives[0] == pytest.approx(500 * 0.175)
    assert counts.positives[1] == pytest.approx(500 * 0.02)  # only NIH annotates Hernia
    assert counts.positives[2] is None  # no set annotates it: no weight, no group
    assert counts.groups == {"Pleural Effusion": "head", "Hernia": "medium"}
    pos_weight = build_loss(LossConfig(name="weighted_bce"), counts.positives, counts.total).pos_weight
    assert pos_weight.tolist() == pytest.approx([0.825 / 0.175, 49.0, 1.0])

    alone = training_counts([TrainingSet(nih, "train", 1.0)], schema)  # one set: its counts, mapped
    assert alone.positives == [10, 2, None] and alone.total == 100


def test_mix_draws_each_stream_at_its_ratio_and_keeps_the_one_extra_rule():
    rng = np.random.default_rng(0)
    drawn = list(
        mix(iter(["a"] * 20000), [(iter(["b"] * 20000), 0.2), (iter(["c"] * 20000), 0.3)], np.random.default_rng(0))
    )[:10000]
    shares = {k: drawn.count(k) / len(drawn) for k in "abc"}
    assert shares == pytest.approx({"a": 0.5, "b": 0.2, "c": 0.3}, abs=0.02)
    # One extra stream: u < ratio picks it, the rule the synthetic mix has always used.
    one = list(mix(iter(range(100)), [(iter(range(1000, 1100)), 0.3)], np.random.default_rng(1)))[:50]
    expected = [u < 0.3 for u in np.random.default_rng(1).random(50)]
    assert [x >= 1000 for x in one] == expected
    with pytest.raises(ValueError, match="sum to less than 1"):
        next(mix(iter([1]), [(iter([2]), 0.6), (iter([3]), 0.5)], rng))


def test_open_training_sets_names_the_source_at_fault(starter_shards, chexpert_shards, tmp_path):
    from cxrlt.errors import InputError

    sets = open_training_sets(starter_shards, "train", [Source(chexpert_shards, 0.3)], "union")
    assert [s.share for s in sets.sets] == pytest.approx([0.7, 0.3]) and sets.schema.name == "union"
    with pytest.raises(InputError, match=r"data.sources\[0\].shards = .*no _index.json"):
        open_training_sets(starter_shards, "train", [Source(tmp_path, 0.3)], "")
    with pytest.raises(InputError, match=r"data.sources\[0\].split = 'validation'"):
        open_training_sets(starter_shards, "train", [Source(chexpert_shards, 0.3, "validation")], "")
    with pytest.raises(InputError, match=r"data.shards = .*none of the classes of 'nih-14'"):
        open_training_sets(starter_shards, "train", [], "cxr-lt-2024-task3")
    with pytest.raises(ValueError, match="ratios sum"):
        open_training_sets(starter_shards, "train", [Source(chexpert_shards, 0.6), Source(chexpert_shards, 0.4)], "")
