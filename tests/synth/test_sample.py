"""synth sample: tail classes and label sets from real labels, seeded generation, the classifier
filter, and synthetic shards that the training reader mixes in."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from cxrlt.data.readers import ReaderConfig, TrainReader
from cxrlt.data.shardset import read_index
from cxrlt.data.tarstream import tar_samples
from cxrlt.data.transforms import TransformConfig
from cxrlt.errors import InputError
from cxrlt.models.saved import load_model
from synth.config import FilterConfig, SampleConfig, SynthConfig
from synth.filter import score_candidates
from synth.generate import generate, image_path, plan_candidates, read_manifest
from synth.labelsets import draw_label_sets, target_classes, train_labels
from synth.model import load_synth_model
from synth.sample import SampleResult, sample


def test_tail_classes_and_label_sets_follow_the_real_train_labels(starter: Path) -> None:
    index = read_index(starter)
    labels = train_labels(starter)
    assert labels.shape == (index.splits["train"], len(index.classes))
    # 17 of 515 train images each: the starter's two rarest classes.
    assert target_classes(index.classes, labels, SampleConfig(tail_threshold=0.04)) == ["Edema", "Hernia"]
    assert target_classes(index.classes, labels, SampleConfig(classes=["Mass"])) == ["Mass"]
    with pytest.raises(InputError, match="Masss"):
        target_classes(index.classes, labels, SampleConfig(classes=["Masss"]))
    sets = draw_label_sets(labels, index.classes, "Hernia", 4000, seed=0)
    hernia = index.classes.index("Hernia")
    assert (sets.rows[:, hernia] == 1).all()
    assert np.array_equal(sets.rows, labels[sets.sources])
    # Co-occurring findings appear at their real rate among Hernia images.
    real_rate = (labels[labels[:, hernia] == 1] == 1).mean(axis=0)
    assert np.abs((sets.rows == 1).mean(axis=0) - real_rate).max() < 0.04
    assert (real_rate[np.arange(len(real_rate)) != hernia] > 0).any()


def test_generation_is_seeded_and_independent_of_batching(trained: SynthConfig, starter: Path, tmp_path: Path) -> None:
    model = load_synth_model(trained.model_file)
    index = read_index(starter)
    labels = train_labels(starter)
    sets = [draw_label_sets(labels, index.classes, "Edema", 3, seed=0)]
    cfg = replace(trained.sample, ddim_steps=3)
    candidates = plan_candidates(sets, index.classes, cfg, model)
    other_seed = plan_candidates(sets, index.classes, replace(cfg, seed=1), model)
    runs = {"a": (candidates, 3), "b": (candidates, 3), "one-by-one": (candidates, 1), "seed-1": (other_seed, 3)}
    for name, (planned, batch) in runs.items():
        assert generate(planned, model, tmp_path / name, batch) == 3
    pixels = {name: [np.asarray(Image.open(image_path(tmp_path / name, c))) for c in runs[name][0]] for name in runs}
    assert all(np.array_equal(x, y) for x, y in zip(pixels["a"], pixels["b"]))
    assert all(np.abs(x.astype(int) - y).max() <= 1 for x, y in zip(pixels["a"], pixels["one-by-one"]))
    assert not any(np.array_equal(x, y) for x, y in zip(pixels["a"], pixels["seed-1"]))
    assert pixels["a"][0].shape == (32, 32)
    assert generate(candidates, model, tmp_path / "a", 3) == 0  # a rerun keeps what exists


def test_filter_scores_are_the_classifier_probabilities(
    sampled: tuple[SynthConfig, SampleResult], classifier: Path
) -> None:
    cfg, result = sampled
    candidates = [replace(c) for c in result.candidates]
    saved = load_model(classifier)
    model = saved.build()
    t = saved.transform
    expected = []
    for c in candidates:
        pixels = torch.from_numpy(np.asarray(Image.open(image_path(cfg.synthetic_dir, c)))).unsqueeze(0)
        x = (F.resize(pixels, [t["size"], t["size"]], antialias=True).float() / 255.0 - t["mean"]) / t["std"]
        with torch.no_grad():
            expected.append(float(torch.sigmoid(model(x.unsqueeze(0)))[0, saved.classes.index(c.target)]))
    assert [c.filter_score for c in result.candidates] == pytest.approx(expected, abs=1e-5)
    threshold = float(np.median(expected))
    score_candidates(candidates, cfg.synthetic_dir, FilterConfig(classifier=classifier, threshold=threshold))
    assert [c.kept for c in candidates] == [s >= threshold for s in expected]
    assert 0 < sum(c.kept for c in candidates) < len(candidates)


def test_synthetic_shards_carry_provenance_and_the_trainer_mixes_them_in(
    sampled: tuple[SynthConfig, SampleResult], starter: Path, classifier: Path
) -> None:
    cfg, result = sampled
    index = read_index(cfg.synthetic_dir)
    real = read_index(starter)
    assert index.classes == real.classes and index.schema == real.schema
    assert index.splits == {"train": len(result.candidates)} == {"train": 2 * cfg.sample.per_class}
    assert [c.key for c in read_manifest(cfg.synthetic_dir)] == [c.key for c in result.candidates]
    by_key = {c.key: c for c in result.candidates}
    metas = [json.loads(s["json"]) for e in index.shards for s in tar_samples(str(cfg.synthetic_dir / e.file))]
    for meta in metas:
        c = by_key[meta["image_id"]]
        assert meta["synthetic"] is True and meta["source"] == "synthetic" and meta["labels"] == c.labels
        p = meta["provenance"]
        assert (p["target"], p["seed"], p["guidance"], p["ddim_steps"]) == (c.target, c.seed, cfg.sample.guidance, 3)
        assert p["model"] == str(cfg.model_file) and p["label_set"] == c.positives
        assert p["filter"] == {"classifier": str(classifier), "threshold": 0.0, "score": c.filter_score}
    reader_cfg = ReaderConfig(
        batch_size=16, steps_per_epoch=6, shuffle_buffer=32, synthetic_ratio=0.5, transform=TransformConfig(size=32)
    )
    batches = list(TrainReader(starter, reader_cfg, synthetic=cfg.synthetic_dir))
    synthetic = torch.cat([b["synthetic"] for b in batches])
    assert 0 < int(synthetic.sum()) < len(synthetic)
    for batch in batches:
        for image_id, labels, flag in zip(batch["id"], batch["labels"], batch["synthetic"]):
            assert bool(flag) == (image_id in by_key)
            if flag:
                assert labels.tolist() == by_key[image_id].labels


def test_resampling_draws_nothing_new_and_an_empty_filter_result_is_an_input_error(
    sampled: tuple[SynthConfig, SampleResult], make_config, tmp_path: Path
) -> None:
    cfg, result = sampled
    again = sample(cfg)
    assert again.drawn == 0 and again.index.num_samples == result.index.num_samples
    strict = make_config(
        cfg.run.out_dir, f"sample.out={tmp_path}", f"filter.classifier={cfg.filter.classifier}", "filter.threshold=1.01"
    )
    with pytest.raises(InputError, match="no candidate reached"):
        sample(strict)
