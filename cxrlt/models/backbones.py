"""Backbone factory over timm: the registered image encoders and the feature-map contract they share.

Every backbone is a timm model built with `pretrained=False` (no weights are ever downloaded), its
classifier removed, wrapped so that every family returns the same thing: a feature map
(B, C, H / stride, W / stride). CNNs (ConvNeXt, EfficientNetV2, MaxViT, DenseNet) give one directly;
ViT's patch tokens are reshaped onto their grid (prefix tokens dropped), with `dynamic_img_size` so one
model trains at several resolutions. Weights come only from a local checkpoint (see checkpoints.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from cxrlt.atomic import atomic_path
from cxrlt.models.checkpoints import load_backbone_weights
from cxrlt.models.registry import Registry

Family = Literal["convnext", "convnextv2", "efficientnetv2", "tf_efficientnetv2", "vit", "maxvit", "densenet"]


@dataclass(frozen=True)
class BackboneSpec:
    """What the factory needs to know about one registered timm architecture.

    `tiny`: cheap enough to build and train on CPU in the fast test suite.
    `fixed_size`: the architecture is laid out for one input size (MaxViT's attention windows, ViT's
    position-embedding grid), so `img_size` is passed to timm; other families take any size.
    """

    name: str
    family: Family
    tiny: bool
    fixed_size: bool
    drop_path: bool
    # Pairs rather than a mapping proxy: models hold their spec and must stay deep-copyable (EMA copies them).
    timm_kwargs: tuple[tuple[str, Any], ...] = ()


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def _register_family(
    family: Family,
    tiny: tuple[str, ...],
    large: tuple[str, ...],
    *,
    fixed_size: bool = False,
    drop_path: bool = True,
    **timm_kwargs: Any,
) -> None:
    for name in tiny + large:
        BACKBONES.register(
            name,
            BackboneSpec(name, family, name in tiny, fixed_size, drop_path, tuple(timm_kwargs.items())),
        )


_register_family("convnext", ("convnext_atto",), ("convnext_tiny", "convnext_small", "convnext_base"))
_register_family("convnextv2", ("convnextv2_atto",), ("convnextv2_tiny", "convnextv2_base"))
_register_family("efficientnetv2", ("efficientnetv2_rw_t",), ("efficientnetv2_s", "efficientnetv2_m"))
_register_family("tf_efficientnetv2", ("tf_efficientnetv2_b0",), ("tf_efficientnetv2_s", "tf_efficientnetv2_m"))
_register_family(
    "vit",
    ("vit_tiny_patch16_224",),
    ("vit_small_patch16_224", "vit_base_patch16_224"),
    fixed_size=True,
    dynamic_img_size=True,
)
_register_family("maxvit", ("maxvit_pico_rw_256",), ("maxvit_tiny_tf_224", "maxvit_small_tf_224"), fixed_size=True)
# timm's DenseNet has no stochastic depth; it only takes drop_rate.
_register_family("densenet", ("densenet121",), (), drop_path=False)


@dataclass
class BackboneConfig:
    """One image encoder. `img_size` only matters to fixed-size families (ViT, MaxViT): the size its
    position grid / attention windows are laid out for; ViT still accepts other sizes at run time."""

    name: str = "convnext_atto"
    in_chans: int = 1
    img_size: int = 224
    drop_path_rate: float = 0.0
    checkpoint: Path | None = None
    checkpoint_use_ema: bool = True
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        spec = BACKBONES.get(self.name)
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if self.img_size <= 0 or self.img_size % 32:
            raise ValueError(f"img_size must be a positive multiple of 32, got {self.img_size}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.drop_path_rate and not spec.drop_path:
            raise ValueError(f"backbone {self.name!r} has no stochastic depth; set drop_path_rate = 0")


class Backbone(nn.Module):
    """A timm model without its classifier, returning a spatial feature map.

    Input:  images (B, in_chans, H, W), floating point, normalised by the data pipeline.
    Output: features (B, num_features, h, w), same dtype, h = H // stride and w = W // stride for
            sizes divisible by `stride` (convolutional families round odd sizes up).
    Attributes: `num_features` (C), `stride` (32 for the CNNs and MaxViT, the patch size for ViT),
            `spec` (the registry entry), `model` (the timm module, whose state dict is what checkpoints
            hold).
    """

    def __init__(self, model: nn.Module, spec: BackboneSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.num_features: int = getattr(model, "head_hidden_size", None) or model.num_features
        self.stride: int = model.feature_info[-1]["reduction"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # forward_head(pre_logits=True) with global_pool='' keeps the map but applies the head norm
        # (ConvNeXt, MaxViT), so every parameter takes part and receives a gradient.
        features = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        if features.ndim == 3:
            grid_h, grid_w = self.model.patch_embed.dynamic_feat_size(images.shape[-2:])
            patches = features[:, self.model.num_prefix_tokens :]
            features = patches.transpose(1, 2).reshape(features.shape[0], -1, grid_h, grid_w)
        return features


def create_backbone(cfg: BackboneConfig) -> Backbone:
    """Build the configured backbone with random weights, then load `cfg.checkpoint` if given."""
    spec = BACKBONES.get(cfg.name)
    kwargs: dict[str, Any] = dict(spec.timm_kwargs)
    if spec.fixed_size:
        kwargs["img_size"] = cfg.img_size
    if spec.drop_path:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    model = timm.create_model(
        cfg.name, pretrained=False, num_classes=0, global_pool="", in_chans=cfg.in_chans, **kwargs
    )
    if cfg.checkpoint is not None:
        load_backbone_weights(model, cfg.checkpoint, use_ema=cfg.checkpoint_use_ema)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return Backbone(model, spec)


def save_backbone_checkpoint(backbone: Backbone, path: str | os.PathLike) -> Path:
    """Write the backbone's timm state dict atomically, in the layout `BackboneConfig.checkpoint` reads."""
    payload = {"state_dict": backbone.model.state_dict(), "backbone": backbone.spec.name}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)
