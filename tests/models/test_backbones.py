"""Backbone factory: every registered backbone builds at its own size rule, the tiny ones train at 64 px,
checkpoints load exactly, mismatches explain."""

from __future__ import annotations

import pytest
import timm
import torch

from cxrlt.config import ConfigError, from_dict
from cxrlt.errors import InputError
from cxrlt.models import BACKBONES, BackboneConfig, create_backbone, save_backbone_checkpoint

TINY = [n for n in BACKBONES if BACKBONES.get(n).tiny]
LARGE = [n for n in BACKBONES if not BACKBONES.get(n).tiny]


def _forward_backward(name: str, in_chans: int = 1) -> None:
    """At 64 px, or the nearest size of the backbone's rule (56 for patch 14)."""
    multiple = BACKBONES.get(name).size_multiple
    size = 64 // multiple * multiple
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(name=name, in_chans=in_chans, img_size=size))
    images = torch.randn(2, in_chans, size, size)
    features = backbone(images)
    assert features.shape == (2, backbone.num_features, size // backbone.stride, size // backbone.stride)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    features.square().mean().backward()
    no_grad = [k for k, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"


# The backbones CXR-LT 2024 teams reported (issue #18): team B EfficientNetV2-L, team E DINOv2 ViT-L/14,
# team F ConvNeXtV2-S and MaxViT-T, team I DenseNet-121, SigLIP ViT-B/16 and ConvNeXt-S; plus ResNet-50.
TEAM_BACKBONES = {
    "vit_small_patch14_dinov2": 14,
    "vit_base_patch14_dinov2": 14,
    "vit_large_patch14_dinov2": 14,
    "convnextv2_small": 32,
    "convnextv2_base": 32,
    "efficientnetv2_m": 32,
    "efficientnetv2_l": 32,
    "tf_efficientnetv2_l": 32,
    "resnet50": 32,
    "vit_base_patch16_siglip_224": 16,
    "maxvit_tiny_tf_224": 32,
    "densenet121": 32,
    "convnext_small": 32,
}


def test_registry_covers_the_required_families():
    families = {BACKBONES.get(n).family for n in BACKBONES}
    assert families == {
        "convnext",
        "convnextv2",
        "efficientnetv2",
        "tf_efficientnetv2",
        "resnet",
        "vit",
        "dinov2",
        "siglip",
        "maxvit",
        "densenet",
    }
    assert {n: BACKBONES.get(n).size_multiple for n in TEAM_BACKBONES} == TEAM_BACKBONES
    assert all(name in timm.list_models() for name in BACKBONES)


@pytest.mark.parametrize("name", [n for n in TEAM_BACKBONES if not BACKBONES.get(n).tiny])
def test_full_size_team_backbone_builds_on_the_meta_device_with_its_size_rule(name):
    """The full architecture through create_backbone, without allocating or initialising its weights:
    the timm name resolves, and the size rule is the model's real output stride."""
    size = 2 * BACKBONES.get(name).size_multiple
    with torch.device("meta"):
        backbone = create_backbone(BackboneConfig(name=name, img_size=size))
    assert backbone.stride == BACKBONES.get(name).size_multiple
    assert sum(p.numel() for p in backbone.parameters()) > 20_000_000  # the real size, not a small sibling
    if name == "vit_large_patch14_dinov2":
        with torch.device("meta"):
            assert backbone(torch.empty(2, 1, size, size)).shape == (2, 1024, 2, 2)


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_base_patch16_siglip_224", "resnet50"])
def test_config_follows_the_backbone_size_rule(name):
    multiple = BACKBONES.get(name).size_multiple
    assert BackboneConfig(name=name, img_size=multiple * 24).img_size == multiple * 24
    with pytest.raises(ValueError, match=f"multiple of {multiple} for {name}"):
        BackboneConfig(name=name, img_size=multiple * 24 + 8)


def test_patch14_sizes_the_cxr_lt_teams_trained_at():
    for size in (224, 336, 448, 518):
        assert BackboneConfig(name="vit_large_patch14_dinov2", img_size=size).img_size == size
    with pytest.raises(ValueError, match="multiple of 32 for convnextv2_small"):
        BackboneConfig(name="convnextv2_small", img_size=336)


def test_dinov2_trains_at_patch14_sizes():
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(name="vit_small_patch14_dinov2", img_size=56))
    assert backbone.stride == 14
    features = backbone(torch.randn(2, 1, 56, 56))
    assert features.shape == (2, 384, 4, 4)
    features.square().mean().backward()
    assert all(p.grad is not None for p in backbone.parameters())  # layer scale and class token included
    assert backbone.eval()(torch.randn(1, 1, 98, 70)).shape == (1, 384, 7, 5)


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_forward_backward_at_64px(name):
    _forward_backward(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE)
def test_large_backbone_forward_backward_at_64px(name):
    _forward_backward(name)


def test_three_channel_input():
    _forward_backward("convnext_atto", in_chans=3)


def test_vit_runs_at_several_resolutions():
    backbone = create_backbone(BackboneConfig(name="vit_tiny_patch16_224", img_size=64)).eval()
    assert backbone.stride == 16
    assert backbone(torch.randn(1, 1, 64, 64)).shape == (1, 192, 4, 4)
    assert backbone(torch.randn(1, 1, 96, 128)).shape == (1, 192, 6, 8)


@pytest.mark.parametrize("name", TINY)
def test_checkpoint_round_trips_exactly(name, tmp_path):
    cfg = BackboneConfig(name=name, img_size=64)
    torch.manual_seed(1)
    original = create_backbone(cfg).eval()
    path = save_backbone_checkpoint(original, tmp_path / "backbone.pt")
    torch.manual_seed(2)
    restored = create_backbone(BackboneConfig(name=name, img_size=64, checkpoint=path)).eval()
    for key, value in original.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key]), key
    images = torch.randn(2, 1, 64, 64)
    assert torch.equal(original(images), restored(images))


@pytest.mark.parametrize("name", ["convnext_atto", "tf_efficientnetv2_b0", "vit_tiny_patch16_224", "densenet121"])
def test_rgb_checkpoint_with_classifier_loads_into_grey_model_by_summing_the_stem(name, tmp_path):
    torch.manual_seed(3)
    kwargs = {"img_size": 64} if BACKBONES.get(name).fixed_size else {}
    rgb = timm.create_model(name, pretrained=False, num_classes=10, in_chans=3, **kwargs).eval()
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")  # a plain state dict, classifier included
    grey, colour = (
        create_backbone(BackboneConfig(name=name, in_chans=c, img_size=64, checkpoint=tmp_path / "rgb.pth")).eval()
        for c in (1, 3)
    )
    stem = f"{rgb.pretrained_cfg['first_conv']}.weight"
    assert torch.equal(grey.model.state_dict()[stem], rgb.state_dict()[stem].sum(1, keepdim=True))
    assert torch.equal(colour.model.state_dict()[stem], rgb.state_dict()[stem])
    image = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(grey(image), colour(image.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_training_checkpoint_layouts_are_unwrapped(tmp_path):
    torch.manual_seed(4)
    original = create_backbone(BackboneConfig(name="convnext_atto")).eval()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in original.model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    restored = create_backbone(BackboneConfig(name="convnext_atto", checkpoint=tmp_path / "ddp.pth")).eval()
    images = torch.randn(1, 1, 64, 64)
    assert torch.equal(original(images), restored(images))


def test_vit_checkpoint_at_224_is_resampled_to_the_configured_size(tmp_path):
    source = create_backbone(BackboneConfig(name="vit_tiny_patch16_224", img_size=224))
    path = save_backbone_checkpoint(source, tmp_path / "vit224.pt")
    target = create_backbone(BackboneConfig(name="vit_tiny_patch16_224", img_size=64, checkpoint=path))
    assert target.model.pos_embed.shape == (1, 1 + 16, 192)
    assert torch.equal(target.model.blocks[0].attn.qkv.weight, source.model.blocks[0].attn.qkv.weight)


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path):
    path = save_backbone_checkpoint(create_backbone(BackboneConfig(name="convnext_atto")), tmp_path / "v1.pt")
    with pytest.raises(InputError) as err:
        create_backbone(BackboneConfig(name="convnextv2_atto", checkpoint=path))
    message = str(err.value)
    assert str(path) in message
    assert "missing" in message and "mlp.grn.weight" in message
    assert "unexpected" in message and "gamma" in message


def test_shape_mismatch_is_reported_with_both_shapes(tmp_path):
    state = create_backbone(BackboneConfig(name="convnext_atto")).model.state_dict()
    state["stages.0.blocks.0.conv_dw.weight"] = torch.zeros(40, 1, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    expected = r"shape mismatch.*stages\.0\.blocks\.0\.conv_dw\.weight: checkpoint \(40, 1, 5, 5\)"
    with pytest.raises(InputError, match=expected):
        create_backbone(BackboneConfig(name="convnext_atto", checkpoint=tmp_path / "bad.pth"))


def test_missing_checkpoint_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        create_backbone(BackboneConfig(name="convnext_atto", checkpoint=tmp_path / "nope.pt"))


def test_config_rejects_unknown_names_and_channel_counts():
    with pytest.raises(ConfigError, match="did you mean 'convnext_atto'"):
        from_dict(BackboneConfig, {"name": "convnext_ato"})
    with pytest.raises(ConfigError, match="in_chans"):
        from_dict(BackboneConfig, {"in_chans": 2})
    with pytest.raises(ConfigError, match="stochastic depth"):
        from_dict(BackboneConfig, {"name": "densenet121", "drop_path_rate": 0.1})
