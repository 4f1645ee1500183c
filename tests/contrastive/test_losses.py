"""CLIP / SigLIP losses and CheXzero zero-shot scoring, against their textbook formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrlt.models.contrastive import ContrastiveConfig, clip_loss, contrastive_loss, report_texts, siglip_loss, text_ids
from cxrlt.models.prompts import PromptConfig, class_prompts


def _unit(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_clip_with_distinct_texts_is_symmetric_cross_entropy_on_the_diagonal():
    image, text, scale = _unit(6), _unit(6, seed=1), torch.tensor(10.0)
    logits = scale * image @ text.T
    expected = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    got = clip_loss(image, text, scale, torch.eye(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_rows_with_the_same_report_are_positives_and_rows_without_text_are_left_out():
    image, text, scale = _unit(5), _unit(5, seed=1), torch.tensor(5.0)
    ids = text_ids(["a", "b", "a", "c", ""])
    valid = torch.tensor([True, True, True, True, False])
    got = contrastive_loss("clip", image, text, ids, valid, scale, None)
    logits = scale * image[:4] @ text[:4].T
    targets = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]])
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # Changing the excluded row's embeddings changes nothing.
    moved = contrastive_loss("clip", image.index_fill(0, torch.tensor([4]), 0.3), text, ids, valid, scale, None)
    assert moved.item() == got.item()


def test_siglip_is_the_pairwise_sigmoid_loss_per_row():
    image, text = _unit(4), _unit(4, seed=2)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    signs = 2 * torch.eye(4) - 1
    expected = -F.logsigmoid(signs * (scale * image @ text.T + bias)).sum() / 4
    got = siglip_loss(image, text, scale, bias, torch.eye(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_batch_without_report_text_gives_a_zero_loss_that_still_backpropagates():
    image = _unit(3).requires_grad_()
    loss = clip_loss(
        image, _unit(3), torch.tensor(3.0), torch.eye(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(image.grad, torch.zeros_like(image))


def test_report_text_is_the_configured_sections_in_order():
    cfg = ContrastiveConfig(sections=["IMPRESSION", "FINDINGS"])
    assert report_texts(cfg, ["Heart enlarged.", "", ""], ["Cardiomegaly.", "Normal.", ""]) == [
        "Cardiomegaly. Heart enlarged.",
        "Normal.",
        "",
    ]
    assert report_texts(ContrastiveConfig(sections=["FINDINGS"]), ["x"], ["y"]) == ["x"]
    with pytest.raises(ValueError, match="sections"):
        ContrastiveConfig(sections=["HISTORY"])
    with pytest.raises(ValueError, match="init_bias"):
        ContrastiveConfig(loss="clip", init_bias=-5.0)


def test_prompts_fill_every_template_and_add_the_description_as_a_positive():
    (prompts,) = class_prompts(["Pleural Effusion"], PromptConfig(), {"Pleural Effusion": "fluid in the pleura"})
    assert prompts.positive == (
        "pleural effusion",
        "there is pleural effusion",
        "findings consistent with pleural effusion",
        "pleural effusion: fluid in the pleura",
    )
    assert prompts.negative == (
        "no pleural effusion",
        "there is no pleural effusion",
        "no evidence of pleural effusion",
    )
    with pytest.raises(ValueError, match="exactly once"):
        PromptConfig(negative=["no finding"])
