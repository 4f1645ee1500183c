"""Image-report contrastive model (CLIP / SigLIP on chest X-rays, as ConVIRT, CheXzero and the CXR-LT
2024 Task 2/3 teams trained it) and its zero-shot scoring.

Two towers meet in one `embed_dim` space, both L2-normalised:
- image: an image model (registry backbone + pooled linear projection) or the study fusion model
  (cxrlt.models.study, views + optional clinical context, pooled linear projection);
- text: a local transformers encoder (cxrlt.models.text; the packaged MiniLM by default, any local
  BioClinicalBERT / CXR-BERT / PubMedBERT folder through `model.text_encoder.path`) and a linear
  projection. Its text is the study report's configured sections (IMPRESSION first by default, so the
  conclusion survives truncation of a long FINDINGS).

One forward serves the trainer, validation and `cxrlt predict`:
- with report text (training): `ContrastiveOutput` with both embeddings, which pairs carry the same text
  (image-level samples of one study share a report, and so do studies with identical text: they are
  positives for each other, not negatives), which rows have any text, and the logit scale (and bias);
- without (evaluation): zero-shot logits (B, K) for the model's classes, CheXzero's softmax over a
  class's positive and negative prompts written as one logit, s * (cos(x, p_k) - cos(x, n_k)), whose
  sigmoid is that softmax. p_k / n_k average the embeddings of the class's prompts (cxrlt.models.prompts).
  The prompt embeddings are recomputed on the first evaluation forward after any change of mode or
  weights, never stored: the class list is free (any names, any descriptions) like a text-query head's.

The losses take embeddings gathered over every rank (trainers.contrastive) so negatives span the global
batch: `clip_loss` is the symmetric InfoNCE of CLIP with multi-positive soft targets; `siglip_loss` the
pairwise sigmoid loss of SigLIP (Zhai et al., 2023), summed over pairs and divided by the row count.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxrlt.models.backbones import Backbone, image_backbones
from cxrlt.models.prompts import PromptConfig, class_prompts
from cxrlt.models.text import TextEncoder

# The papers' starting points: CLIP's temperature 0.07 (scale 1/0.07), SigLIP's scale 10 and bias -10
# (the bias keeps the many negatives from dominating the first steps).
_INIT = {"clip": (1 / 0.07, 0.0), "siglip": (10.0, -10.0)}
SECTIONS = ("FINDINGS", "IMPRESSION")


@dataclass
class ContrastiveConfig:
    """tower: "image" (one image per sample) or "study" (the study fusion model of `model.study`).
    embed_dim: the shared space. loss: "clip" or "siglip". init_scale / init_bias: the starting logit
    scale and (SigLIP) bias; None takes the paper's value. max_scale: cap on the learnt scale (CLIP's 100).
    sections: the report sections that make a sample's text, in this order. prompts: zero-shot prompts."""

    tower: Literal["image", "study"] = "image"
    embed_dim: int = 512
    loss: Literal["clip", "siglip"] = "clip"
    init_scale: float | None = None
    init_bias: float | None = None
    max_scale: float = 100.0
    sections: list[str] = field(default_factory=lambda: ["IMPRESSION", "FINDINGS"])
    prompts: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if self.init_scale is not None and not 0 < self.init_scale <= self.max_scale:
            raise ValueError(f"init_scale must be in (0, max_scale = {self.max_scale}], got {self.init_scale}")
        if not math.isfinite(self.max_scale) or self.max_scale <= 0:
            raise ValueError(f"max_scale must be a positive number, got {self.max_scale}")
        if self.init_bias is not None and (self.loss != "siglip" or not math.isfinite(self.init_bias)):
            raise ValueError("init_bias is the SigLIP bias: set it only with loss = 'siglip', to a finite number")
        unknown = [s for s in self.sections if s.upper() not in SECTIONS]
        if not self.sections or unknown:
            raise ValueError(f"sections must be a non-empty list of {SECTIONS}, got {self.sections}")

    @property
    def start_scale(self) -> float:
        return self.init_scale if self.init_scale is not None else min(_INIT[self.loss][0], self.max_scale)

    @property
    def start_bias(self) -> float:
        return self.init_bias if self.init_bias is not None else _INIT[self.loss][1]


def report_texts(cfg: ContrastiveConfig, findings: Sequence[str] | None, impression: Sequence[str] | None) -> list[str]:
    """Each sample's text: its configured sections, in order, joined by a space ("" when it has none)."""
    columns = {"FINDINGS": findings, "IMPRESSION": impression}
    count = len(findings if findings is not None else impression or ())
    rows = []
    for i in range(count):
        parts = [(columns[s.upper()] or [""] * count)[i].strip() for s in cfg.sections]
        rows.append(" ".join(p for p in parts if p))
    return rows


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    """(N,) int64 fingerprints of the texts: equal text, equal id, on every rank (Python's own str hash
    is salted per process, so it would differ between ranks)."""
    digests = [hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts]
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests], dtype=torch.int64)


@dataclass
class ContrastiveOutput:
    """A training forward's result: image / text (N, E) unit embeddings (text rows without a report are
    zeros), ids (N,) int64 text fingerprints, valid (N,) bool (the row has report text), scale () the
    logit scale, bias () the SigLIP bias or None."""

    image: torch.Tensor
    text: torch.Tensor
    ids: torch.Tensor
    valid: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None


class ContrastiveModel(nn.Module):
    """Input:  images (B, C, H, W) with an image tower, or a study batch (images (B, V, C, H, W),
            view_padding_mask, view_types, indication, vitals: cxrlt.models.study's inputs) with a study
            tower; findings / impression: B strings each, or None.
    Output: with findings or impression, a ContrastiveOutput; without, zero-shot logits (B, K) for
            `classes`.
    """

    def __init__(
        self,
        cfg: ContrastiveConfig,
        image_tower: nn.Module,
        text_encoder: TextEncoder,
        classes: Sequence[str],
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_tower = image_tower
        self.text_encoder = text_encoder
        # BERT-style models carry a pooler that mean pooling never calls: left trainable, it would get
        # no gradient, and ranks would disagree on which parameters have one.
        pooler = getattr(text_encoder.model, "pooler", None)
        if pooler is not None:
            pooler.requires_grad_(False)
        self.text_proj = nn.Linear(text_encoder.dim, cfg.embed_dim)
        # Shape (1,), not (): DeepSpeed broadcasts parameters as byte views, which a 0-d tensor cannot be.
        self.logit_scale = nn.Parameter(torch.tensor([math.log(cfg.start_scale)]))
        self.logit_bias = nn.Parameter(torch.tensor([cfg.start_bias])) if cfg.loss == "siglip" else None
        self.classes = tuple(classes)
        self.prompts = class_prompts(self.classes, cfg.prompts, descriptions)
        self._class_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def encoders(self) -> list[Backbone]:
        """The image backbone(s), as trainers.modelinit looks for them (to freeze them)."""
        return image_backbones(self.image_tower)

    def train(self, mode: bool = True) -> ContrastiveModel:
        self._class_cache = None  # the weights may change in either mode; prompts are re-embedded
        return super().train(mode)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self._class_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def scale(self) -> torch.Tensor:
        """() the logit scale, exp of the learnt log scale, capped at max_scale."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_scale).squeeze(0)

    def bias(self) -> torch.Tensor | None:
        return None if self.logit_bias is None else self.logit_bias.squeeze(0)

    def encode_images(self, images: torch.Tensor, **study: Any) -> torch.Tensor:
        return F.normalize(self.image_tower(images, **study).float(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text_encoder(texts)).float(), dim=-1)

    @torch.no_grad()
    def class_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, E) positive and (K, E) negative prompt embeddings: each the renormalised mean of the
        class's prompt embeddings (computed once per evaluation pass)."""
        if self._class_cache is None:
            sides = []
            for side in ("positive", "negative"):
                texts = [t for p in self.prompts for t in getattr(p, side)]
                embedded = self.encode_texts(texts)
                counts = [len(getattr(p, side)) for p in self.prompts]
                means = torch.stack([chunk.mean(0) for chunk in embedded.split(counts)])
                sides.append(F.normalize(means, dim=-1))
            self._class_cache = (sides[0], sides[1])
        return self._class_cache

    def forward(
        self,
        images: torch.Tensor,
        view_padding_mask: torch.Tensor | None = None,
        view_types: torch.Tensor | None = None,
        indication: Sequence[str | None] | None = None,
        vitals: Sequence[Mapping[str, Any]] | None = None,
        findings: Sequence[str] | None = None,
        impression: Sequence[str] | None = None,
    ) -> ContrastiveOutput | torch.Tensor:
        study: dict[str, Any] = {}
        if view_padding_mask is not None:
            study = {"view_padding_mask": view_padding_mask, "view_types": view_types}
            study.update(indication=indication, vitals=vitals)
        image = self.encode_images(images, **study)
        if findings is None and impression is None:
            positive, negative = self.class_embeddings()
            return self.scale() * (image @ positive.T - image @ negative.T)
        texts = report_texts(self.cfg, findings, impression)
        valid = torch.tensor([bool(t) for t in texts], device=image.device)
        text = image.new_zeros(len(texts), self.cfg.embed_dim)
        if valid.any():
            # Rows without a report are left out of the text tower (and of the loss).
            text = text.index_put((valid.nonzero().flatten(),), self.encode_texts([t for t in texts if t]))
        return ContrastiveOutput(image, text, text_ids(texts).to(image.device), valid, self.scale(), self.bias())


def _valid_pairs(
    image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keep = valid.nonzero().flatten()
    return image[keep], text[keep], positives[keep][:, keep]


def _no_pairs(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A zero loss still connected to every input, so backward runs the same on every rank."""
    return (image.sum() + text.sum() + scale) * 0.0


def clip_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over the valid rows: image -> text and text -> image cross-entropy, each row's
    target spread evenly over its positives (its own pair and any pair with the same text).

    image, text: (N, E) unit embeddings; positives: (N, N) bool; valid: (N,) bool. Returns a scalar."""
    if not bool(valid.any()):
        return _no_pairs(image, text, scale)
    image, text, positives = _valid_pairs(image, text, positives, valid)
    logits = scale * image @ text.T
    targets = positives.float() / positives.float().sum(1, keepdim=True)
    image_to_text = -(targets * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(targets.T * logits.T.log_softmax(1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def siglip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    positives: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """SigLIP: -sum over valid pairs of log sigmoid(z * (scale * cos + bias)), z = +1 for positives and
    -1 otherwise, divided by the number of valid rows (the paper's normalisation)."""
    if not bool(valid.any()):
        return _no_pairs(image, text, scale) + bias * 0.0
    image, text, positives = _valid_pairs(image, text, positives, valid)
    logits = scale * image @ text.T + bias
    signs = positives.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / len(image)


def contrastive_loss(
    kind: str,
    image: torch.Tensor,
    text: torch.Tensor,
    ids: torch.Tensor,
    valid: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """The configured loss over (already gathered) embeddings; pairs with equal text ids are positives."""
    positives = ids[:, None] == ids[None, :]
    image, text = image.float(), text.float()
    if kind == "clip":
        return clip_loss(image, text, scale, positives, valid)
    if bias is None:
        raise ValueError("the SigLIP loss needs the model's logit bias (build the model with loss = 'siglip')")
    return siglip_loss(image, text, scale, bias, positives, valid)
