"""Model factory configs and the EMA wrapper."""

from __future__ import annotations

import pytest
import torch

from cxrlt.config import ConfigError, load_config, to_toml, write_config
from cxrlt.models import EmaConfig, ImageClassifier, ModelConfig, build_model, create_ema


def test_model_config_round_trips_through_toml_and_overrides(tmp_path):
    path = write_config(ModelConfig(kind="study"), tmp_path / "model.toml")
    overrides = ["backbone.name=efficientnetv2_s", "study.context.vitals=text", "head.num_groups=20"]
    cfg = load_config(ModelConfig, path, overrides)
    assert (cfg.kind, cfg.backbone.name, cfg.study.context.vitals, cfg.head.num_groups) == (
        "study",
        "efficientnetv2_s",
        "text",
        20,
    )
    assert load_config(ModelConfig, path) == ModelConfig(kind="study")
    assert "[study.context]" in to_toml(cfg)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown model kind 'images'"):
        load_config(ModelConfig, None, ["kind=images"])
    with pytest.raises(ConfigError, match="study.context.vitals"):
        load_config(ModelConfig, None, ["study.context.vitals=csv"])


@pytest.mark.parametrize("head", ["linear", "ml_decoder"])
def test_image_model_from_config(head):
    overrides = [f"head.name={head}", "head.decoder_dim=32", "head.num_heads=4", "head.ffn_dim=64"]
    cfg = load_config(ModelConfig, None, overrides)
    model = build_model(cfg, ["a", "b", "c"])
    assert isinstance(model, ImageClassifier)
    logits = model(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 3)


def test_ema_disabled_gives_none():
    assert create_ema(torch.nn.Linear(2, 2), EmaConfig()) is None


def test_ema_follows_the_moving_average_formula():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = create_ema(model, EmaConfig(enabled=True, decay=0.9, warmup=False))
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(5, 3))  # updates BatchNorm running statistics (buffers are averaged too)
    ema.update(model, step=10)
    for key, value in ema.module.state_dict().items():
        current = model.state_dict()[key]
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * start[key] + 0.1 * current)
        else:
            assert torch.equal(value, current)


def test_ema_copies_a_real_model_and_averages_it():
    cfg = load_config(ModelConfig, None, ["head.name=linear"])
    model = build_model(cfg, ["a", "b"])
    ema = create_ema(model, EmaConfig(enabled=True, decay=0.5, warmup=False))
    with torch.no_grad():
        model.head.fc.bias.fill_(2.0)
        ema.module.head.fc.bias.zero_()
    ema.update(model, step=5)
    assert torch.equal(ema.module.head.fc.bias, torch.ones(2))
    assert ema.module.backbone.spec == model.backbone.spec and not ema.module.training


def test_ema_warmup_ramps_the_decay():
    ema = create_ema(torch.nn.Linear(2, 2), EmaConfig(enabled=True, decay=0.999, warmup_power=0.75))
    assert ema.get_decay(1) == 0.0  # the first update copies the model
    assert ema.get_decay(11) == pytest.approx(1 - (1 + 10) ** -0.75)
    assert ema.get_decay(10**9) == 0.999
