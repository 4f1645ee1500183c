"""Trainer pieces that need no process group: batch adaptation, schedule, parameter groups, TTA,
pseudo-label filling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cxrlt.data.shardset import SEXES, VIEW_TYPES, VITALS
from cxrlt.models.views import FRONTAL, LATERAL, UNKNOWN_VIEW
from trainers.batches import model_inputs, vitals_records
from trainers.engine import parameter_groups, warmup_cosine
from trainers.inference import TTA, SplitOutputs, image_rows
from trainers.loop import improved, masked_bce
from trainers.pseudo import PseudoLabels, load_pseudo_labels


def test_study_batch_becomes_model_inputs_with_coarse_views_inverted_mask_and_vital_records():
    views = torch.tensor(
        [[VIEW_TYPES.index(v) for v in ("PA", "LL", "pad")], [VIEW_TYPES.index(v) for v in ("AP", "OTHER", "LATERAL")]]
    )
    vitals = torch.zeros(2, len(VITALS))
    vitals[0, VITALS.index("heartrate")] = 88.0
    present = torch.zeros(2, len(VITALS), dtype=torch.bool)
    present[0, VITALS.index("heartrate")] = True
    batch = {
        "images": torch.zeros(2, 3, 1, 8, 8),
        "view_mask": torch.tensor([[True, True, False], [True, True, True]]),
        "view_type": views,
        "indication": ["cough", ""],
        "vitals": vitals,
        "vitals_mask": present,
        "sex": torch.tensor([SEXES.index("F"), SEXES.index("unknown")]),
    }
    inputs = model_inputs(batch, "study", torch.device("cpu"))
    assert inputs.kwargs["view_padding_mask"].tolist() == [[False, False, True], [False, False, False]]
    assert inputs.kwargs["view_types"].tolist() == [[FRONTAL, LATERAL, UNKNOWN_VIEW], [FRONTAL, UNKNOWN_VIEW, LATERAL]]
    assert inputs.kwargs["indication"] == ["cough", None]
    assert inputs.kwargs["vitals"] == [{"heartrate": 88.0, "gender": "F"}, {}]


def test_vitals_records_keep_only_measured_values():
    values = torch.arange(len(VITALS), dtype=torch.float32)[None]
    mask = torch.tensor([[i % 2 == 0 for i in range(len(VITALS))]])
    record = vitals_records(values, mask, torch.tensor([SEXES.index("M")]))[0]
    assert record == {**{VITALS[i]: float(i) for i in range(0, len(VITALS), 2)}, "gender": "M"}


def test_warmup_then_cosine_reaches_min_ratio_at_the_last_step():
    factor = warmup_cosine(warmup_steps=4, total_steps=20, min_ratio=0.1)
    assert [factor(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factor(4) == pytest.approx(1.0)
    assert factor(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(20) == pytest.approx(0.1)
    assert factor(30) == pytest.approx(0.1)


def test_parameter_groups_skip_frozen_and_exempt_norms_biases_from_decay():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].requires_grad_(False)
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3  # first bias, norm weight and bias; the frozen layer is absent


def test_tta_parsing_and_views():
    assert TTA.parse("none") == TTA()
    tta = TTA.parse("hflip,scales=0.5,1.5")
    assert tta == TTA(hflip=True, scales=(0.5, 1.5)) and tta.describe() == "hflip,scales=0.5,1.5"
    images = torch.rand(2, 1, 64, 64)
    views = tta.views(images)
    assert [v.shape[-1] for v in views] == [64, 32, 96, 64, 32, 96]
    assert torch.equal(views[3], images.flip(-1))
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        TTA.parse("vflip")


def test_study_predictions_expand_to_one_row_per_image():
    outputs = SplitOutputs(
        index=np.arange(2),
        ids=["s1", "s2"],
        study_ids=["s1", "s2"],
        image_ids=[["a", "b"], ["c"]],
        labels=np.zeros((2, 1), np.float32),
        probs=np.array([[0.1], [0.9]], np.float32),
    )
    image_ids, study_ids, rows = image_rows(outputs)
    assert (image_ids, study_ids, rows.tolist()) == (["a", "b", "c"], ["s1", "s1", "s2"], [0, 0, 1])


def test_pseudo_labels_fill_only_unknown_entries_and_round_trip(tmp_path):
    probs = np.array([[0.9, 0.2], [0.4, 0.7]], np.float32)
    pseudo = PseudoLabels(["x", "y"], probs, ["A", "B"], hard=False, threshold=0.5)
    targets = torch.tensor([[-1.0, 1.0], [0.0, -1.0], [-1.0, -1.0]])
    filled = pseudo.fill(["y", "x", "unseen"], targets)
    assert np.allclose(filled.numpy(), [[0.4, 1.0], [0.0, 0.2], [-1.0, -1.0]])
    # 2 of the 6 entries were unknown for a sample the teacher scored; the count restarts once read.
    assert pseudo.take_fill_rate() == pytest.approx(2 / 6) and pseudo.take_fill_rate() == 0.0
    pseudo.save(tmp_path / "p.npz")
    hard = load_pseudo_labels(tmp_path / "p.npz", ["A", "B"], hard=True, threshold=0.5)
    assert hard.fill(["x"], torch.full((1, 2), -1.0)).tolist() == [[1.0, 0.0]]


def test_monitor_direction_and_dev_loss():
    assert improved(0.5, None, "mAP", 0.0) and improved(0.6, 0.5, "mAP", 0.0) and not improved(0.5, 0.5, "mAP", 0.0)
    assert improved(0.4, 0.5, "loss", 0.0) and not improved(0.6, 0.5, "loss", 0.0)
    assert not improved(float("nan"), None, "mAP", 0.0)
    labels = np.array([[1.0, -1.0], [0.0, 1.0]], np.float32)
    probs = np.array([[0.8, 0.5], [0.3, 0.6]], np.float32)
    expected = -(np.log(0.8) + np.log(0.7) + np.log(0.6)) / 3
    assert masked_bce(labels, probs) == pytest.approx(expected, rel=1e-6)


def test_validation_decides_best_epoch_and_early_stop_from_patience():
    from trainers.checkpointing import TrainState
    from trainers.config import TrainConfig
    from trainers.inference import SplitOutputs
    from trainers.loop import _validate

    cfg = TrainConfig()
    cfg.schedule.patience = 2
    labels = np.array([[1.0], [0.0], [1.0], [0.0]], np.float32)
    outputs = SplitOutputs(
        np.arange(4),
        list("abcd"),
        list("abcd"),
        [[i] for i in "abcd"],
        labels,
        np.array([[0.2], [0.8], [0.3], [0.7]], np.float32),
    )
    metrics, is_best, stop = _validate(cfg, TrainState(best_score=None), outputs, ["A"], {})
    assert is_best and not stop and metrics["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)  # positives ranked 4th and 3rd
    metrics, is_best, stop = _validate(cfg, TrainState(best_score=0.9, bad_epochs=0), outputs, ["A"], {})
    assert not is_best and not stop  # first epoch without improvement
    _, is_best, stop = _validate(cfg, TrainState(best_score=0.9, bad_epochs=1), outputs, ["A"], {})
    assert not is_best and stop  # the second one reaches patience 2


def test_trainer_loss_weights_leave_never_annotated_classes_neutral(tmp_path):
    from cxrlt.data.build import BuildOptions, build_shards
    from cxrlt.data.shardset import read_index
    from cxrlt.data.sources.starter import read_starter
    from cxrlt.data.writer import WriterOptions
    from cxrlt.labels import get_schema
    from cxrlt.models.losses import LossConfig
    from trainers.loop import build_criterion

    schema = get_schema("nih-14")
    table = read_starter(schema)
    table.records = table.records[:60]
    never, none_positive = [schema.index("Hernia"), schema.index("Fibrosis")], schema.index("Edema")
    for record in table.records:
        record.labels = record.labels.copy()
        record.labels[never] = -1.0  # a source that lacks these classes
        record.labels[none_positive] = 0.0
    build_shards(table, schema, tmp_path, BuildOptions(), WriterOptions(max_size=8, samples_per_shard=100))
    index = read_index(tmp_path)
    counts = index.positive_counts("train")
    assert [counts[i] for i in never] == [None, None] and counts[none_positive] == 0

    weights = build_criterion(LossConfig(name="weighted_asl"), index, "train").asl.weight
    observed = [i for i, c in enumerate(counts) if c]
    assert weights[never].tolist() == [1.0, 1.0]
    assert weights[observed].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert weights[none_positive].item() == pytest.approx(weights[observed].max().item())

    index.split_known_counts = None  # an index written before known counts: zero positives read as no count
    assert index.positive_counts("train")[none_positive] is None


def test_a_frozen_batchnorm_backbone_keeps_its_running_statistics_through_training():
    from cxrlt.config import from_dict
    from cxrlt.models.ema import create_ema
    from trainers.config import TrainConfig
    from trainers.modelinit import build_member_model

    cfg = from_dict(
        TrainConfig,
        {
            "model": {"backbone": {"name": "tf_efficientnetv2_b0", "img_size": 32}, "head": {"name": "linear"}},
            "stage": {"freeze_backbone": True},
        },
    )
    torch.manual_seed(0)
    model = build_member_model(cfg, ["a", "b", "c"])
    ema = create_ema(model, cfg.ema)
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [n.running_mean.clone() for n in norms]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        model.train()  # as the loop's engine.train() does each epoch
        model(torch.randn(4, 1, 32, 32)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(n.running_mean, b) for n, b in zip(norms, before))
    assert model.training and not model.backbone.training and not any(n.training for n in norms)
    if ema is not None:
        ema.module.train()
        assert not ema.module.backbone.training


def test_weight_decay_follows_parameter_kind_not_name_on_vit_with_ml_decoder():
    from cxrlt.config import from_dict
    from cxrlt.models.factory import ModelConfig, build_model

    cfg = from_dict(
        ModelConfig,
        {
            "backbone": {"name": "vit_tiny_patch16_224", "img_size": 32},
            "head": {
                "name": "ml_decoder",
                "decoder_dim": 32,
                "num_heads": 2,
                "ffn_dim": 64,
                "num_groups": 2,
                "learnable_queries": True,
            },
        },
    )
    model = build_model(cfg, ["a", "b", "c"])
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = parameter_groups(model, 0.05)
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert {"head.embed.weight", "head.group_weight", "backbone.model.patch_embed.proj.weight"} <= decayed
    assert {
        "head.queries",
        "head.embed.bias",
        "head.layers.0.norm1.weight",
        "backbone.model.pos_embed",
        "backbone.model.cls_token",
        "backbone.model.norm.weight",
        "backbone.model.patch_embed.proj.bias",
    } <= exempt
