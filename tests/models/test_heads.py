"""Heads: shapes, masking, group decoding and text-initialised (zero-shot capable) queries."""

from __future__ import annotations

import math

import pytest
import torch

from cxrlt.config import ConfigError, from_dict
from cxrlt.models import HEADS, HeadConfig, LinearHead, MLDecoderHead, build_head


def _decoder(num_classes: int, num_groups: int = 100, **kwargs) -> MLDecoderHead:
    torch.manual_seed(0)
    return MLDecoderHead(24, num_classes, num_groups=num_groups, dim=32, num_heads=4, ffn_dim=64, **kwargs).eval()


def test_registered_heads():
    assert set(HEADS.names()) == {"linear", "ml_decoder"}


def test_linear_head_pools_only_unpadded_tokens():
    head = LinearHead(8, 5).eval()
    tokens = torch.randn(2, 6, 8)
    padding = torch.tensor([[False, False, True, True, True, True], [False] * 6])
    expected = head.fc(torch.stack([tokens[0, :2].mean(0), tokens[1].mean(0)]))
    torch.testing.assert_close(head(tokens, padding), expected)
    feature_map = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(head(feature_map), head.fc(feature_map.mean((2, 3))))


@pytest.mark.parametrize(("num_classes", "num_groups"), [(40, 100), (45, 10), (45, 7), (26, 1)])
def test_group_decoding_matches_per_group_projection(num_classes, num_groups):
    head = _decoder(num_classes, num_groups)
    features = torch.randn(3, 24, 4, 4)
    groups = min(num_groups, num_classes)
    assert head.queries.shape[0] == groups and head.group_weight.shape[2] == math.ceil(num_classes / groups)
    memory = torch.relu(head.embed(features.flatten(2).transpose(1, 2)))
    decoded = head.queries.unsqueeze(0).expand(3, -1, -1)
    for layer in head.layers:
        decoded = layer(decoded, memory, None)
    per_group = [decoded[:, g] @ head.group_weight[g] for g in range(groups)]
    expected = torch.cat(per_group, dim=1)[:, :num_classes] + head.group_bias
    torch.testing.assert_close(head(features), expected)


def test_ml_decoder_masks_padding_and_keeps_samples_independent():
    head = _decoder(13, 4)
    tokens = torch.randn(3, 10, 24)
    padding = torch.zeros(3, 10, dtype=torch.bool)
    padding[0, 6:] = True
    reference = head(tokens, padding)
    changed = tokens.clone()
    changed[0, 6:] = torch.randn(4, 24) * 100
    changed[2] = torch.randn(10, 24)
    out = head(changed, padding)
    torch.testing.assert_close(out[:2], reference[:2])
    assert not torch.allclose(out[2], reference[2])


def test_fixed_queries_get_no_gradient_and_everything_else_does():
    head = _decoder(13, 4).train()
    head(torch.randn(2, 24, 3, 3)).sum().backward()
    assert not head.queries.requires_grad
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    assert _decoder(13, 4, learnable_queries=True).queries.requires_grad


def test_text_queries_give_one_query_per_class_and_accept_new_classes():
    torch.manual_seed(1)
    embeddings = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    head = _decoder(4, class_embeddings=embeddings)
    features = torch.randn(2, 24, 3, 3)
    seen = head(features)
    assert seen.shape == (2, 4)
    extra = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    head.set_class_embeddings(torch.cat([embeddings, extra]))
    extended = head(features)
    assert extended.shape == (2, 7)
    # A class's logit depends only on its own embedding: adding unseen classes leaves the others as they were.
    torch.testing.assert_close(extended[:, :4], seen)
    with pytest.raises(ValueError, match=r"\(K, 16\)"):
        head.set_class_embeddings(torch.randn(3, 8))


def test_build_head_and_config_validation():
    assert isinstance(build_head(HeadConfig(name="linear"), 24, 5), LinearHead)
    with pytest.raises(ValueError, match="text encoder"):
        build_head(HeadConfig(text_queries=True), 24, 5)
    with pytest.raises(ConfigError, match="unknown head"):
        from_dict(HeadConfig, {"name": "mlp"})
    with pytest.raises(ConfigError, match="divisible"):
        from_dict(HeadConfig, {"decoder_dim": 30, "num_heads": 8})
