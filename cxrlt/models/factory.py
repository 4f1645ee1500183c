"""Whole models from config: the image classifier and the study model, registered by kind.

`build_model(cfg, classes)` is the one entry point trainers use. Class text embeddings for
text-initialised ML-Decoder queries are computed here, once, from `class_prompt` and the class
descriptions (`class_descriptions`, see cxrlt.models.descriptions; extra ones can be passed to
`build_model`, e.g. for zero-shot names) through the text encoder; an image model keeps only the
embeddings, a study model keeps the encoder for its context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cxrlt.models.backbones import Backbone, BackboneConfig, create_backbone
from cxrlt.models.descriptions import class_texts, load_descriptions
from cxrlt.models.heads import HeadConfig, build_head
from cxrlt.models.registry import Registry
from cxrlt.models.study import StudyConfig, StudyModel
from cxrlt.models.text import TextEncoder, TextEncoderConfig

ModelBuilder = Callable[["ModelConfig", Sequence[str], Mapping[str, str]], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model kind")


@dataclass
class ModelConfig:
    """kind: "image" (one image -> labels) or "study" (views + context -> labels; uses `study`).
    class_prompt: the text a class's query is initialised from, "{}" standing for the class name.
    class_descriptions: a packaged descriptions name (e.g. "nih-14") or a descriptions file whose
    text follows each class's prompt (text-query heads only; None: names alone)."""

    kind: str = "image"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    class_prompt: str = "{}"
    class_descriptions: str | None = None

    def __post_init__(self) -> None:
        MODELS.get(self.kind)
        if "{}" not in self.class_prompt:
            raise ValueError(f"class_prompt must contain '{{}}' for the class name, got {self.class_prompt!r}")


class ImageClassifier(nn.Module):
    """Input:  images (B, in_chans, H, W) float.
    Output: logits (B, num_classes) float.
    """

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


@torch.no_grad()
def class_text_embeddings(
    encoder: TextEncoder, classes: Sequence[str], prompt: str = "{}", descriptions: Mapping[str, str] | None = None
) -> torch.Tensor:
    """(K, E) sentence embeddings of each class's query text (prompt with its name, then description)."""
    return encoder(class_texts(classes, prompt, descriptions))


def _class_embeddings(
    cfg: ModelConfig, classes: Sequence[str], descriptions: Mapping[str, str], encoder: TextEncoder | None
) -> torch.Tensor | None:
    if not cfg.head.text_queries:
        return None
    return class_text_embeddings(encoder or TextEncoder(cfg.text_encoder), classes, cfg.class_prompt, descriptions)


@MODELS.decorator("image")
def _build_image(cfg: ModelConfig, classes: Sequence[str], descriptions: Mapping[str, str]) -> ImageClassifier:
    backbone = create_backbone(cfg.backbone)
    embeddings = _class_embeddings(cfg, classes, descriptions, None)
    return ImageClassifier(backbone, build_head(cfg.head, backbone.num_features, len(classes), embeddings))


@MODELS.decorator("study")
def _build_study(cfg: ModelConfig, classes: Sequence[str], descriptions: Mapping[str, str]) -> StudyModel:
    encoders = [create_backbone(cfg.backbone) for _ in range(cfg.study.num_encoders)]
    text_encoder = TextEncoder(cfg.text_encoder) if cfg.study.context.needs_text_encoder else None
    embeddings = _class_embeddings(cfg, classes, descriptions, text_encoder)
    return StudyModel(cfg.study, encoders, build_head(cfg.head, cfg.study.dim, len(classes), embeddings), text_encoder)


def build_model(cfg: ModelConfig, classes: Sequence[str], descriptions: Mapping[str, str] | None = None) -> nn.Module:
    """The configured model predicting `classes` (in that order). `descriptions` add to (and override)
    the configured `class_descriptions` for the class query texts."""
    if not classes:
        raise ValueError("build_model needs at least one class")
    configured = load_descriptions(cfg.class_descriptions) if cfg.class_descriptions and cfg.head.text_queries else {}
    return MODELS.get(cfg.kind)(cfg, classes, {**configured, **(descriptions or {})})
