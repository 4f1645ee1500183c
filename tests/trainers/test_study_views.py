"""A study model scores every view of a study: predict_split merges a study's view chunks (studies with
more views than the model's slots) into one row per study with a prediction row for every image, the
same with any batch size and any rank count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlt.config import from_dict
from cxrlt.data.readers import EvalReader, ReaderConfig
from cxrlt.data.transforms import TransformConfig
from cxrlt.labels import NIH_14
from cxrlt.models import ModelConfig, build_model
from tests.multiview import VIEW_COUNTS, build_multiview_shards, study_id
from trainers import distributed
from trainers.inference import TTA, _probabilities, image_rows, predict_split

TRANSFORM = TransformConfig(size=32)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiview")
    build_multiview_shards(out)
    return out


@pytest.fixture(scope="module")
def model():
    cfg = from_dict(
        ModelConfig,
        {
            "kind": "study",
            "backbone": {"name": "convnext_atto", "img_size": 32},
            "head": {"decoder_dim": 32, "num_heads": 4, "ffn_dim": 64, "num_groups": 4},
            "study": {"dim": 32, "heads": 4, "layers": 1, "token_grid": 1, "max_views": 4},
        },
    )
    torch.manual_seed(0)
    return build_model(cfg, list(NIH_14.classes)).eval()


def _reader(shards, batch_size, rank=0, world_size=1):
    config = ReaderConfig(level="study", split="dev", batch_size=batch_size, max_views=4, transform=TRANSFORM)
    return EvalReader(shards, config, rank=rank, world_size=world_size)


def _predict(model, shards, monkeypatch, batch_size, world_size=1):
    """predict_split on `world_size` simulated ranks in this process (the gather hands rank 0 every share)."""
    shares = []

    def gather(share):
        shares.append(share)
        return list(shares) if len(shares) == world_size else None

    monkeypatch.setattr(distributed, "gather_to_main", gather)
    outputs = [
        predict_split(model, _reader(shards, batch_size, r, world_size), "study", CPU) for r in range(world_size)
    ]
    assert all(o is None for o in outputs[:-1])
    return outputs[-1]


def test_every_image_of_a_study_gets_the_mean_of_its_chunks(model, shards, monkeypatch):
    outputs = _predict(model, shards, monkeypatch, batch_size=3)
    studies = [study_id("dev", s) for s in range(len(VIEW_COUNTS))]
    assert sorted(outputs.ids) == sorted(studies) and list(outputs.index) == list(range(len(studies)))
    assert outputs.probs.shape == outputs.labels.shape == (len(studies), len(NIH_14.classes))
    image_ids, study_ids, rows = image_rows(outputs)
    assert sorted(image_ids) == sorted(f"dev{s}-img{v}" for s, n in enumerate(VIEW_COUNTS) for v in range(n))
    assert all(image.split("-")[0] == study.split("-")[0] for image, study in zip(image_ids, study_ids))
    six = outputs.ids.index(study_id("dev", 0))
    assert len(outputs.image_ids[six]) == 6 and (rows == six).sum() == 6
    # The merged row is the mean of the chunks' probabilities, each chunk scored alone.
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in _reader(shards, 1):
        chunks.setdefault(batch["id"][0], []).append(
            _probabilities(model, batch, "study", CPU, TTA(), False)[0].numpy()
        )
    assert [len(chunks[s]) for s in studies] == [2 if n > 4 else 1 for n in VIEW_COUNTS]
    for row, sid in enumerate(outputs.ids):
        np.testing.assert_allclose(outputs.probs[row], np.mean(chunks[sid], axis=0), atol=1e-6)


def test_merge_is_independent_of_batch_size_and_rank_count(model, shards, monkeypatch):
    base = _predict(model, shards, monkeypatch, batch_size=4)
    for batch_size, world_size in ((1, 1), (3, 2), (1, 2)):
        other = _predict(model, shards, monkeypatch, batch_size=batch_size, world_size=world_size)
        assert other.ids == base.ids and other.image_ids == base.image_ids
        np.testing.assert_array_equal(other.index, base.index)
        np.testing.assert_array_equal(other.labels, base.labels)
        np.testing.assert_allclose(other.probs, base.probs, atol=1e-6)
