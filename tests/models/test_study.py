"""Study fusion: the defects of public CXR-LT code (studies mixed in attention, padding that never
masks) must be impossible; view order, placeholders and per-view encoders behave as documented."""

from __future__ import annotations

import pytest
import torch

from cxrlt.config import from_dict
from cxrlt.models import EmaConfig, ModelConfig, StudyModel, build_model, create_ema

CLASSES = [f"class {i}" for i in range(11)]
SIZE = 64


def _study_model(**study) -> StudyModel:
    cfg = from_dict(
        ModelConfig,
        {
            "kind": "study",
            "backbone": {"name": "convnext_atto", "img_size": SIZE},
            "head": {"decoder_dim": 32, "num_heads": 4, "ffn_dim": 64, "num_groups": 4},
            "study": {"dim": 32, "heads": 4, "layers": 2, "token_grid": 2, "max_views": 4, **study},
        },
    )
    torch.manual_seed(0)
    return build_model(cfg, CLASSES).eval()


@pytest.fixture(scope="module")
def model() -> StudyModel:
    return _study_model(context={"indication": True, "vitals": "numeric"})


def _inputs(batch: int = 3, views: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, views, 1, SIZE, SIZE, generator=generator)
    padding = torch.zeros(batch, views, dtype=torch.bool)
    for i in range(batch):
        padding[i, 1 + i % views :] = True  # study i has 1 + i real views
    types = torch.randint(0, 3, (batch, views), generator=generator)
    indication = ["fever and cough", None, "rule out pneumothorax"][:batch]
    vitals = [{"heartrate": 110, "o2sat": 91}, None, {"temperature": 101.2, "gender": "F"}][:batch]
    return images, padding, types, indication, vitals


def _run(model, images, padding, types, indication, vitals):
    with torch.no_grad():
        return model(images, padding, types, indication=indication, vitals=vitals)


def test_output_contract(model):
    logits = _run(model, *_inputs())
    assert logits.shape == (3, len(CLASSES)) and logits.dtype == torch.float32


def test_padded_view_content_never_changes_the_output(model):
    images, padding, types, indication, vitals = _inputs()
    reference = _run(model, images, padding, types, indication, vitals)
    garbage = images.clone()
    garbage[padding] = torch.randn_like(garbage[padding]) * 1e3
    shuffled_types = types.clone()
    shuffled_types[padding] = (types[padding] + 1) % 3
    out = _run(model, garbage, padding, shuffled_types, indication, vitals)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)


def test_extra_padding_slots_never_change_the_output(model):
    images, padding, types, indication, vitals = _inputs(views=2)
    reference = _run(model, images, padding, types, indication, vitals)
    wider = torch.cat([images, torch.randn(3, 2, 1, SIZE, SIZE)], dim=1)
    wider_padding = torch.cat([padding, torch.ones(3, 2, dtype=torch.bool)], dim=1)
    wider_types = torch.cat([types, torch.zeros(3, 2, dtype=torch.long)], dim=1)
    out = _run(model, wider, wider_padding, wider_types, indication, vitals)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_changing_one_study_never_changes_another(model):
    images, padding, types, indication, vitals = _inputs()
    reference = _run(model, images, padding, types, indication, vitals)
    changed_images = images.clone()
    changed_images[1] = torch.randn_like(images[1])
    changed_types = types.clone()
    changed_types[1] = (types[1] + 1) % 3
    out = _run(
        model,
        changed_images,
        padding,
        changed_types,
        [indication[0], "new text", indication[2]],
        [vitals[0], {"sbp": 90}, vitals[2]],
    )
    torch.testing.assert_close(out[[0, 2]], reference[[0, 2]], atol=1e-6, rtol=0)
    assert not torch.allclose(out[1], reference[1])


def test_each_study_alone_equals_the_study_in_a_batch(model):
    images, padding, types, indication, vitals = _inputs()
    batched = _run(model, images, padding, types, indication, vitals)
    for i in range(3):
        one = slice(i, i + 1)
        alone = _run(model, images[one], padding[one], types[one], indication[one], vitals[one])
        torch.testing.assert_close(alone[0], batched[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slot_embedding", [False, True])
def test_view_order_matters_only_through_slot_embeddings(slot_embedding):
    model = _study_model(slot_embedding=slot_embedding)
    images, _, types, _, _ = _inputs(batch=2, views=3)
    padding = torch.tensor([[False, False, False], [False, False, True]])
    order = torch.tensor([2, 0, 1])
    permuted = [images[:, order], padding[:, order], types[:, order]]
    reference = _run(model, images, padding, types, None, None)
    out = _run(model, *permuted, None, None)
    if slot_embedding:
        assert not torch.allclose(out, reference, atol=1e-4)
    else:
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vitals_mode", ["numeric", "text"])
def test_missing_modality_uses_its_placeholder(vitals_mode):
    model = _study_model(context={"indication": True, "vitals": vitals_mode})
    context = model.context
    with torch.no_grad():
        tokens = context(3, ["chest pain", None, "  "], [None, {"heartrate": 70}, {"pain": 3}])
    placeholders = context.placeholders
    assert tokens.shape == (3, 2, 32)
    assert torch.equal(tokens[1, 0], placeholders["indication"])
    assert torch.equal(tokens[2, 0], placeholders["indication"])
    assert not torch.allclose(tokens[0, 0], placeholders["indication"])
    assert torch.equal(tokens[0, 1], placeholders["vitals"]) and torch.equal(tokens[2, 1], placeholders["vitals"])
    assert not torch.allclose(tokens[1, 1], placeholders["vitals"])
    with torch.no_grad():
        all_absent = context(2, None, None)
    assert torch.equal(all_absent, torch.stack([placeholders["indication"], placeholders["vitals"]]).expand(2, -1, -1))


def test_placeholder_reaches_only_studies_missing_the_modality(model):
    images, padding, types, indication, vitals = _inputs()
    reference = _run(model, images, padding, types, indication, vitals)
    # A random change: a constant shift of a token would vanish in the pre-norm LayerNorms.
    shift = torch.randn(32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.context.placeholders["indication"].add_(shift)
    try:
        out = _run(model, images, padding, types, indication, vitals)
    finally:
        with torch.no_grad():
            model.context.placeholders["indication"].sub_(shift)
    torch.testing.assert_close(out[[0, 2]], reference[[0, 2]], atol=1e-6, rtol=0)
    assert not torch.allclose(out[1], reference[1])


def test_per_view_encoders_route_views_by_type():
    model = _study_model(view_encoders="per_view")
    assert len(model.encoders) == 3
    images, _, _, _, _ = _inputs(batch=2, views=2)
    padding = torch.zeros(2, 2, dtype=torch.bool)
    types = torch.tensor([[0, 0], [0, 1]])  # only study 1 has a lateral view
    reference = _run(model, images, padding, types, None, None)
    with torch.no_grad():
        for p in model.encoders[1].parameters():
            p.mul_(1.5)
    out = _run(model, images, padding, types, None, None)
    torch.testing.assert_close(out[0], reference[0], atol=1e-6, rtol=0)
    assert not torch.allclose(out[1], reference[1])


def test_training_step_reaches_every_used_parameter(model):
    model.train()
    try:
        images, padding, types, indication, vitals = _inputs()
        model(images, padding, types, indication=indication, vitals=vitals).sum().backward()
        trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
        assert not any(k.startswith("context.text_encoder") for k in trainable)  # frozen by default
        missing = [k for k, p in trainable.items() if p.grad is None and not k.startswith("head.queries")]
        assert not missing, missing[:5]
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


def test_inputs_are_validated(model):
    images, padding, types, indication, vitals = _inputs()
    all_padded = padding.clone()
    all_padded[0] = True
    with pytest.raises(ValueError, match="at least one real"):
        _run(model, images, all_padded, types, indication, vitals)
    with pytest.raises(ValueError, match="max_views"):
        _run(model, torch.zeros(1, 5, 1, SIZE, SIZE), torch.zeros(1, 5, dtype=torch.bool), None, None, None)
    with pytest.raises(ValueError, match="entries for a batch"):
        _run(model, images, padding, types, indication[:2], vitals)


def test_ema_copy_of_the_study_model_predicts_the_same(model):
    ema = create_ema(model, EmaConfig(enabled=True))
    inputs = _inputs()
    torch.testing.assert_close(_run(ema.module, *inputs), _run(model, *inputs))


def test_mixed_precision_forward_backward(model):
    images, padding, types, indication, vitals = _inputs()
    model.train()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images, padding, types, indication=indication, vitals=vitals)
        logits.float().sum().backward()
        assert logits.shape == (3, len(CLASSES)) and torch.isfinite(logits).all()
        assert model.context.placeholders["indication"].grad is not None
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_cuda_keeps_padding_and_studies_separate():
    model = _study_model(context={"vitals": "numeric"}).cuda()
    images, padding, types, _, vitals = (x.cuda() if torch.is_tensor(x) else x for x in _inputs())
    garbage, changed = images.clone(), images.clone()
    garbage[padding] = 1e3
    changed[1] = torch.randn_like(changed[1])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference, padded, other = (_run(model, x, padding, types, None, vitals) for x in (images, garbage, changed))
    torch.testing.assert_close(padded, reference, atol=0, rtol=0)
    torch.testing.assert_close(other[[0, 2]], reference[[0, 2]], atol=0, rtol=0)
