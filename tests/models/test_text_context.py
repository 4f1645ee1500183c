"""Text encoder (offline MiniLM), vitals encodings, view types and text-initialised class queries."""

from __future__ import annotations

import math

import pytest
import torch

from cxrlt.errors import InputError
from cxrlt.models import (
    ModelConfig,
    TextEncoder,
    TextEncoderConfig,
    build_model,
    class_text_embeddings,
    default_text_encoder_path,
    view_type_index,
)
from cxrlt.models.vitals import VITALS, vitals_tensor, vitals_text

SENTENCES = ["Shortness of breath, evaluate for pneumonia.", "Line placement.", "Pleural effusion"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig())


def test_default_path_is_the_packaged_minilm():
    path = default_text_encoder_path()
    assert "site-packages" in str(path) and (path / "model.safetensors").is_file()


def test_embeddings_match_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_text_encoder_path()), device="cpu")
    expected = torch.from_numpy(reference.encode(SENTENCES, normalize_embeddings=True))
    embedded = encoder(SENTENCES)
    assert embedded.shape == (3, 384)
    torch.testing.assert_close(embedded, expected, atol=1e-5, rtol=1e-4)


def test_frozen_encoder_has_no_trainable_weights_and_stays_in_eval(encoder):
    encoder.train()
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder([]).shape == (0, 384)


def test_a_folder_without_a_model_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="text_encoder.path"):
        TextEncoder(TextEncoderConfig(path=tmp_path))


def test_vitals_sentence_lists_present_values_with_units():
    text = vitals_text({"temperature": 99.5, "heartrate": 104.0, "o2sat": float("nan"), "gender": "M", "pain": 7})
    assert text == "Triage vitals: temperature 99.5 F, heart rate 104 bpm, gender male."
    assert vitals_text({"o2sat": None, "acuity": 2}) is None
    assert vitals_text(None) is None


def test_vitals_tensor_standardises_and_masks():
    values, present = vitals_tensor([{"heartrate": 103, "gender": "F", "sbp": "n/a"}, None])
    heartrate = [v.key for v in VITALS].index("heartrate")
    gender = [v.key for v in VITALS].index("gender")
    assert values.shape == present.shape == (2, len(VITALS))
    assert values[0, heartrate].item() == pytest.approx((103 - 85) / 18)
    assert values[0, gender].item() == pytest.approx(-1.0)
    assert present[0].sum() == 2 and not present[1].any() and torch.all(values[~present] == 0)


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        ("PA", 0),
        ("AP", 0),
        ("ap axial", 0),
        ("Frontal", 0),
        ("LATERAL", 1),
        ("LL", 1),
        ("Lateral", 1),
        ("LAO", 2),
        ("SWIMMERS", 2),
        ("", 2),
        (None, 2),
    ],
)
def test_view_types(view, expected):
    assert view_type_index(view) == expected


def test_text_queries_are_built_from_class_names(encoder):
    classes = ["Pneumothorax", "Cardiomegaly", "Rib Fracture"]
    cfg = ModelConfig(class_prompt="chest x-ray showing {}")
    cfg.backbone.img_size = 64
    cfg.head.text_queries = True
    cfg.head.decoder_dim, cfg.head.num_heads, cfg.head.ffn_dim = 32, 4, 64
    model = build_model(cfg, classes).eval()
    expected = class_text_embeddings(encoder, classes, "chest x-ray showing {}")
    torch.testing.assert_close(model.head.class_embeddings, expected)
    assert not hasattr(model, "text_encoder")  # the image model keeps the embeddings, not the encoder
    zero_shot = ["Bulla", "Scoliosis"]
    model.head.set_class_embeddings(class_text_embeddings(encoder, zero_shot, cfg.class_prompt))
    logits = model(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 2) and all(math.isfinite(v) for v in logits.flatten().tolist())


@pytest.mark.parametrize("present", ["none", "some", "all"])
def test_every_context_parameter_gets_a_gradient_whatever_the_batch_holds(encoder, present):
    """Regression: a batch (one rank's share) with no vitals left the vitals projection without a gradient;
    DeepSpeed ZeRO then reduced different gradient buckets on the two ranks and the all-reduce failed."""
    from cxrlt.models.context import ClinicalContext, ContextConfig

    context = ClinicalContext(ContextConfig(indication=True, vitals="numeric"), 32, encoder)
    texts = {"none": [None, None], "some": ["Cough.", None], "all": ["Cough.", "Fever."]}[present]
    vitals = {"none": [None, {}], "some": [{"heartrate": 90.0}, None], "all": [{"heartrate": 90.0}, {"o2sat": 95.0}]}[
        present
    ]
    context(2, texts, vitals).sum().backward()
    missing = [name for name, p in context.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
