"""Backbone factory over timm: the registered image encoders and the feature-map contract they share.

Every backbone is a timm model built with `pretrained=False` (no weights are ever downloaded), its
classifier removed, wrapped so that every family returns the same thing: a feature map
(B, C, H / stride, W / stride). CNNs (ConvNeXt, EfficientNetV2, ResNet, MaxViT, DenseNet) give one
directly; ViTs (plain, DINOv2, SigLIP) have their patch tokens reshaped onto their grid (prefix tokens
dropped), with `dynamic_img_size` so one model trains at several resolutions.

The registry holds the families the CXR-LT 2024 teams used: ConvNeXt / ConvNeXtV2 (team F: ConvNeXtV2-S,
team I: ConvNeXt-S), EfficientNetV2 up to L (team B), DINOv2 ViT-S/B/L-14 (team E), SigLIP ViT-B/16,
ResNet-50 and DenseNet-121 (team I), MaxViT-T (team F). The input size follows the backbone
(`size_multiple`): a multiple of the patch size for ViTs (14 for DINOv2, so 224, 336, 448 and 518 all
work), of the stride (32) otherwise. Weights come only from a local file or folder (see checkpoints.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from cxrlt.atomic import atomic_path
from cxrlt.models.checkpoints import load_backbone_weights
from cxrlt.models.registry import Registry

Family = Literal[
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
]
# The CNNs and MaxViT downsample by 32 overall: sizes divisible by it keep every stage's grid whole.
CNN_STRIDE = 32


@dataclass(frozen=True)
class BackboneSpec:
    """What the factory needs to know about one registered timm architecture.

    `tiny`: cheap enough to build and train on CPU in the fast test suite.
    `fixed_size`: the architecture is laid out for one input size (MaxViT's attention windows, ViT's
    position-embedding grid), so `img_size` is passed to timm; other families take any size.
    `size_multiple`: image sizes must be multiples of it (the ViT patch size, else the CNN stride).
    """

    name: str
    family: Family
    tiny: bool
    fixed_size: bool
    drop_path: bool
    size_multiple: int = CNN_STRIDE
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
    size_multiple: int = CNN_STRIDE,
    **timm_kwargs: Any,
) -> None:
    for name in tiny + large:
        spec = BackboneSpec(
            name, family, name in tiny, fixed_size, drop_path, size_multiple, tuple(timm_kwargs.items())
        )
        BACKBONES.register(name, spec)


_register_family("convnext", ("convnext_atto",), ("convnext_tiny", "convnext_small", "convnext_base"))
_register_family("convnextv2", ("convnextv2_atto",), ("convnextv2_tiny", "convnextv2_small", "convnextv2_base"))
_register_family(
    "efficientnetv2", ("efficientnetv2_rw_t",), ("efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l")
)
# The tf_ variants are the Google-trained weights' layout (team B's EfficientNetV2-L is tf_efficientnetv2_l).
_register_family(
    "tf_efficientnetv2",
    ("tf_efficientnetv2_b0",),
    ("tf_efficientnetv2_s", "tf_efficientnetv2_m", "tf_efficientnetv2_l"),
)
_register_family("resnet", ("resnet18",), ("resnet50",))
_VIT = {"fixed_size": True, "dynamic_img_size": True}
_register_family(
    "vit", ("vit_tiny_patch16_224",), ("vit_small_patch16_224", "vit_base_patch16_224"), size_multiple=16, **_VIT
)
# DINOv2 (self-supervised, patch 14, layer scale): timm lays its position grid out for 518 px; the
# configured img_size replaces that and loaded weights are resampled to it.
_register_family(
    "dinov2",
    (),
    ("vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_large_patch14_dinov2"),
    size_multiple=14,
    **_VIT,
)
# SigLIP's image tower has no class token and pools with an attention head; cxrlt's heads replace that
# pool (global_pool=""), so a checkpoint's `attn_pool` weights are left out when loading.
_register_family("siglip", (), ("vit_base_patch16_siglip_224",), size_multiple=16, **_VIT)
_register_family("maxvit", ("maxvit_pico_rw_256",), ("maxvit_tiny_tf_224", "maxvit_small_tf_224"), fixed_size=True)
# timm's DenseNet has no stochastic depth; it only takes drop_rate.
_register_family("densenet", ("densenet121",), (), drop_path=False)


def size_multiple(name: str) -> int:
    """What every input size of backbone `name` must be a multiple of (its patch size or stride)."""
    return BACKBONES.get(name).size_multiple


@dataclass
class BackboneConfig:
    """One image encoder. `img_size` only matters to fixed-size families (ViT, MaxViT): the size its
    position grid / attention windows are laid out for; ViT still accepts other sizes at run time.
    It must be a multiple of the backbone's `size_multiple` (14 for DINOv2, 16 for ViT-B/16, else 32).
    checkpoint: local weights, a file (.pth / .pt / .bin / .safetensors) or a Hugging Face model folder
    (see cxrlt.models.checkpoints); None starts from random weights."""

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
        if self.img_size <= 0 or self.img_size % spec.size_multiple:
            raise ValueError(
                f"img_size must be a positive multiple of {spec.size_multiple} for {self.name} "
                f"(its {'patch size' if spec.size_multiple != CNN_STRIDE else 'stride'}), got {self.img_size}"
            )
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
        # Any: timm's models carry these attributes by family (forward_head, patch_embed, feature_info).
        timm_model: Any = model
        self.model = model
        self.spec = spec
        self.num_features: int = getattr(timm_model, "head_hidden_size", None) or timm_model.num_features
        self.stride: int = timm_model.feature_info[-1]["reduction"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # forward_head(pre_logits=True) with global_pool='' keeps the map but applies the head norm
        # (ConvNeXt, MaxViT), so every parameter takes part and receives a gradient.
        model: Any = self.model
        features = model.forward_head(model.forward_features(images), pre_logits=True)
        if features.ndim == 3:
            grid_h, grid_w = model.patch_embed.dynamic_feat_size(images.shape[-2:])
            patches = features[:, model.num_prefix_tokens :]
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
    model: Any = timm.create_model(
        cfg.name, pretrained=False, num_classes=0, global_pool="", in_chans=cfg.in_chans, **kwargs
    )
    if cfg.checkpoint is not None:
        load_backbone_weights(model, cfg.checkpoint, use_ema=cfg.checkpoint_use_ema)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return Backbone(model, spec)


def save_backbone_checkpoint(backbone: Backbone, path: str | os.PathLike) -> Path:
    """Write the backbone's timm state dict atomically, in the layout `BackboneConfig.checkpoint` reads."""
    return write_backbone_state(backbone.model.state_dict(), backbone.spec.name, path)


def write_backbone_state(
    state: dict[str, torch.Tensor],
    name: str,
    path: str | os.PathLike,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a timm state dict of backbone `name` atomically as {state_dict, backbone[, provenance]},
    the layout `BackboneConfig.checkpoint` reads; `provenance` says where the weights came from."""
    payload: dict[str, Any] = {"state_dict": state, "backbone": name}
    if provenance is not None:
        payload["provenance"] = provenance
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def image_backbones(model: nn.Module) -> list[Backbone]:
    """The image encoder(s) of a model: `.encoders` (a study model, one per view encoder; a contrastive
    model) or `.backbone` (an image model)."""
    encoders = model.encoders if hasattr(model, "encoders") else [model.backbone]
    if not isinstance(encoders, Iterable):
        raise TypeError(f"{type(model).__name__}.encoders is a {type(encoders).__name__}, not a list of backbones")
    return [_backbone(encoder, model) for encoder in encoders]


def _backbone(encoder: object, model: nn.Module) -> Backbone:
    if not isinstance(encoder, Backbone):
        raise TypeError(f"{type(model).__name__}: image encoder is a {type(encoder).__name__}, not a Backbone")
    return encoder
