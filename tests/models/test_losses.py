"""Losses: each equals its textbook formula on random inputs, and unknown (-1) labels are ignored."""

from __future__ import annotations

import math

import pytest
import torch

from cxrlt.config import load_config
from cxrlt.labels import get_schema
from cxrlt.models import LOSSES, LossConfig, build_loss, schema_counts

COUNTS = [500, 40, 3, 120, 9, 700, 60]
TOTAL = 1000
CFG = LossConfig(
    pos_weight_power=0.7,
    class_weight_power=0.5,
    focal_gamma=1.5,
    focal_alpha=0.3,
    gamma_neg=3.0,
    gamma_pos=0.5,
    clip=0.07,
)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 7, generator=generator, dtype=torch.float64).float() * 2
    targets = (torch.rand(6, 7, generator=generator) < 0.4).float()
    targets[torch.rand(6, 7, generator=generator) < 0.3] = -1.0
    targets[0, 0], targets[0, 1] = 1.0, -1.0  # at least one known and one unknown
    return logits, targets


def _pos_weight() -> torch.Tensor:
    counts = torch.tensor(COUNTS, dtype=torch.float32)
    return ((TOTAL - counts) / counts) ** CFG.pos_weight_power


def _class_weight() -> torch.Tensor:
    weights = (TOTAL / torch.tensor(COUNTS, dtype=torch.float32)) ** CFG.class_weight_power
    return weights / weights.mean()


def _bce(x, y, pos_weight=1.0):
    p = torch.sigmoid(x)
    return -(pos_weight * y * torch.log(p) + (1 - y) * torch.log(1 - p))


def _focal(x, y):
    p = torch.sigmoid(x)
    a = CFG.focal_alpha
    gamma = CFG.focal_gamma
    return -(a * y * (1 - p) ** gamma * torch.log(p) + (1 - a) * (1 - y) * p**gamma * torch.log(1 - p))


def _asl(x, y, weight=1.0):
    p = torch.sigmoid(x)
    shifted = (p - CFG.clip).clamp(min=0)  # probability margin: easy negatives below `clip` are discarded
    positive = y * (1 - p) ** CFG.gamma_pos * torch.log(p)
    negative = (1 - y) * shifted**CFG.gamma_neg * torch.log(1 - shifted)
    return -(positive + negative) * weight


FORMULAS = {
    "bce": _bce,
    "weighted_bce": lambda x, y: _bce(x, y, _pos_weight()),
    "focal": _focal,
    "asl": _asl,
    "weighted_asl": lambda x, y: _asl(x, y, _class_weight()),
}


def test_every_registered_loss_has_a_reference_formula():
    assert set(LOSSES.names()) == set(FORMULAS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_loss_equals_formula_over_known_labels(name):
    loss_fn = build_loss(LossConfig(**{**CFG.__dict__, "name": name}), COUNTS, TOTAL)
    logits, targets = _batch()
    known = targets >= 0
    expected = FORMULAS[name](logits.double(), targets.double())[known].mean()
    torch.testing.assert_close(loss_fn(logits, targets).double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_unknown_labels_get_no_loss_and_no_gradient(name):
    loss_fn = build_loss(LossConfig(name=name), COUNTS, TOTAL)
    logits, targets = _batch(1)
    unknown = targets < 0
    logits.requires_grad_(True)
    loss = loss_fn(logits, targets)
    loss.backward()
    assert torch.all(logits.grad[unknown] == 0)
    assert torch.all(logits.grad[targets == 1] != 0)  # (ASL clipping zeroes easy negatives by design)
    moved = logits.detach().clone()
    moved[unknown] += 50.0
    assert loss_fn(moved, targets) == loss.detach()


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_all_unknown_batch_is_zero_without_nan(name):
    loss_fn = build_loss(LossConfig(name=name), COUNTS, TOTAL)
    logits = torch.randn(2, 7, requires_grad=True)
    loss = loss_fn(logits, torch.full((2, 7), -1.0))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_low_precision_logits_are_computed_in_float32():
    loss_fn = build_loss(LossConfig(name="asl"))
    logits, targets = _batch(2)
    loss = loss_fn(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_weights_from_a_schema_use_its_counts_and_leave_zero_shot_classes_neutral():
    schema = get_schema("cxr-lt-2024-all")
    counts, total = schema_counts(schema)
    loss_fn = build_loss(LossConfig(name="weighted_bce", pos_weight_power=0.5), counts, total)
    atelectasis = schema.index("Atelectasis")
    assert loss_fn.pos_weight[atelectasis].item() == pytest.approx(((258_871 - 65_376) / 65_376) ** 0.5, rel=1e-6)
    assert torch.all(loss_fn.pos_weight[schema.index("Bulla") :] == 1.0)
    asl = build_loss(LossConfig(name="weighted_asl"), counts, total)
    weights = asl.asl.weight
    assert weights[: len(get_schema("cxr-lt-2024-task1"))].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert weights[schema.index("Lobar Atelectasis")] > weights[schema.index("Support Devices")]


def test_weighted_losses_need_counts():
    with pytest.raises(ValueError, match="counts"):
        build_loss(LossConfig(name="weighted_asl"))


def test_every_coefficient_is_a_config_override():
    cfg = load_config(LossConfig, None, ["name=focal", "focal_gamma=1", "gamma_neg=2.5", "clip=0", "max_weight=10"])
    assert (cfg.name, cfg.focal_gamma, cfg.gamma_neg, cfg.clip, cfg.max_weight) == ("focal", 1.0, 2.5, 0.0, 10.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        build_loss(LossConfig(name="bce"))(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("name", ["asl", "weighted_asl"])
def test_focusing_powers_below_one_keep_gradients_finite_on_confident_negatives(name):
    # Found by a Tune trial (gamma_neg 0.81): clipping makes a confident negative's probability exactly
    # 0, where p ** gamma has an infinite derivative for gamma < 1.
    loss = build_loss(LossConfig(name=name, gamma_neg=0.81, gamma_pos=1.44, clip=0.05), [5, 5, 5, 5], 20)
    logits = torch.tensor([[-30.0, 30.0, 0.0, -2.9444]], requires_grad=True)
    loss(logits, torch.tensor([[0.0, 1.0, 0.0, 0.0]])).backward()
    assert torch.isfinite(logits.grad).all()


def test_a_class_annotated_without_positives_neither_dominates_nor_shrinks_the_others():
    asl = build_loss(LossConfig(name="weighted_asl"), [50, 20, 5, 0, None], 450)
    weights = asl.asl.weight
    assert weights[:3].mean().item() == pytest.approx(1.0, rel=1e-5)  # the normalisation ignores 0 and None
    assert weights[3].item() == pytest.approx(weights[2].item())  # like the rarest observed class
    assert weights[4].item() == 1.0
