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
from cxrlt.models.contrastive import ContrastiveConfig, ContrastiveModel
from cxrlt.models.descriptions import class_texts, load_descriptions
from cxrlt.models.heads import HeadConfig, LinearHead, build_head
from cxrlt.models.registry import Registry
from cxrlt.models.study import StudyConfig, StudyModel
from cxrlt.models.text import TextEncoder, TextEncoderConfig

ModelBuilder = Callable[["ModelConfig", Sequence[str], Mapping[str, str]], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model kind")


@dataclass
class ModelConfig:
    """kind: "image" (one image -> labels), "study" (views + context -> labels; uses `study`) or
    "contrastive" (image or study tower + report text tower, zero-shot scores; uses `contrastive`, and
    `study` when contrastive.tower = "study"; the head is not used).
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
    # None unless kind = "contrastive" (then its defaults when not given): a classification config then
    # resolves, and hashes, exactly as before the contrastive stage existed.
    contrastive: ContrastiveConfig | None = None

    def __post_init__(self) -> None:
        MODELS.get(self.kind)
        if "{}" not in self.class_prompt:
            raise ValueError(f"class_prompt must contain '{{}}' for the class name, got {self.class_prompt!r}")
        if self.kind == "contrastive" and self.contrastive is None:
            self.contrastive = ContrastiveConfig()
        if self.kind != "contrastive" and self.contrastive is not None:
            raise ValueError(f"contrastive settings are for kind = 'contrastive', not {self.kind!r}")

    @property
    def level(self) -> str:
        """The batches the model reads: "study" for a study model or a study-tower contrastive model."""
        study = self.kind == "study" or (self.contrastive is not None and self.contrastive.tower == "study")
        return "study" if study else "image"

    @property
    def open_vocabulary(self) -> bool:
        """Whether the model scores any class names from text (a text-query head, or a contrastive model)."""
        return self.head.text_queries or self.kind == "contrastive"


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


@MODELS.decorator("contrastive")
def _build_contrastive(cfg: ModelConfig, classes: Sequence[str], descriptions: Mapping[str, str]) -> ContrastiveModel:
    # The towers end in a pooled linear projection to the shared space: LinearHead pools a feature map or
    # the fused study tokens (padded views masked) exactly as a classification head would.
    settings = cfg.contrastive or ContrastiveConfig()
    dim = settings.embed_dim
    if settings.tower == "image":
        backbone = create_backbone(cfg.backbone)
        tower: nn.Module = ImageClassifier(backbone, LinearHead(backbone.num_features, dim))
    else:
        encoders = [create_backbone(cfg.backbone) for _ in range(cfg.study.num_encoders)]
        context = TextEncoder(cfg.text_encoder) if cfg.study.context.needs_text_encoder else None
        tower = StudyModel(cfg.study, encoders, LinearHead(cfg.study.dim, dim), context)
    return ContrastiveModel(settings, tower, TextEncoder(cfg.text_encoder), classes, descriptions)


def build_model(cfg: ModelConfig, classes: Sequence[str], descriptions: Mapping[str, str] | None = None) -> nn.Module:
    """The configured model predicting `classes` (in that order). `descriptions` add to (and override)
    the configured `class_descriptions` for the class query texts (text-query heads) or zero-shot prompts
    (contrastive models)."""
    if not classes:
        raise ValueError("build_model needs at least one class")
    configured = load_descriptions(cfg.class_descriptions) if cfg.class_descriptions and cfg.open_vocabulary else {}
    return MODELS.get(cfg.kind)(cfg, classes, {**configured, **(descriptions or {})})
