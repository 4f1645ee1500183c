"""Classification heads: global-average-pool + linear, and ML-Decoder.

Both take a feature map or a token sequence with an optional padding mask, so the same head serves an
image model (a backbone's map) and a study model (fused view and context tokens, padded views masked).

ML-Decoder (Ridnik et al., 2023) is written here rather than taken from timm.layers.MLDecoder because
timm's layer cannot mask memory tokens (padded views would leak into every study's attention), keeps its
queries at random initialisation with no text option, and runs the group projection as a Python loop;
this one takes a key padding mask, optionally builds one query per class from class-name text
embeddings (so classes can later be swapped for unseen, zero-shot ones), and projects groups in one
einsum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrlt.models.registry import Registry

HeadBuilder = Callable[["HeadConfig", int, int, "torch.Tensor | None"], nn.Module]
HEADS: Registry[HeadBuilder] = Registry("head")


@dataclass
class HeadConfig:
    """`name` picks the head; the remaining keys are ML-Decoder's (the linear head uses `dropout` only).

    num_groups: group queries (ML-Decoder group decoding); each decodes ceil(K / groups) classes.
    text_queries: one query per class from class-name text embeddings instead of group queries.
    """

    name: str = "ml_decoder"
    dropout: float = 0.0
    num_groups: int = 100
    decoder_dim: int = 768
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 1
    decoder_dropout: float = 0.1
    learnable_queries: bool = False
    text_queries: bool = False

    def __post_init__(self) -> None:
        HEADS.get(self.name)
        if self.num_groups < 1 or self.num_layers < 1:
            raise ValueError("num_groups and num_layers must be at least 1")
        if self.decoder_dim % self.num_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} is not divisible by num_heads {self.num_heads}")
        if self.text_queries and self.name != "ml_decoder":
            raise ValueError("text_queries needs the ml_decoder head")


def as_tokens(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) tokens; (B, N, C) tokens pass through."""
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)
    if features.ndim == 3:
        return features
    raise ValueError(f"expected (B, C, H, W) or (B, N, C) features, got shape {tuple(features.shape)}")


class LinearHead(nn.Module):
    """Global average pool over the non-padded tokens, dropout, linear.

    Input:  features (B, C, H, W) or (B, N, C) float; padding_mask (B, N) bool, True = ignore, or None.
    Output: logits (B, num_classes) float.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def per_class_tensors(self) -> tuple[str, ...]:
        """State-dict entries whose rows (axis 0) belong to one class each (cross-schema transfer)."""
        return ("fc.weight", "fc.bias")

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = as_tokens(features)
        if padding_mask is None:
            pooled = tokens.mean(1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.fc(self.drop(pooled))


class _DecoderLayer(nn.Module):
    """ML-Decoder's layer: the transformer decoder layer without query self-attention (the queries are
    independent, so self-attention among them only costs time), post-norm as in the paper."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim), nn.Dropout(dropout)
        )
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        queries = self.norm1(queries)
        attended = self.cross_attn(queries, memory, memory, key_padding_mask=padding_mask, need_weights=False)[0]
        queries = self.norm2(queries + self.drop1(attended))
        return self.norm3(queries + self.ffn(queries))


class MLDecoderHead(nn.Module):
    """Class queries cross-attending to spatial / fused tokens.

    Input:  features (B, C, H, W) or (B, N, C) float; padding_mask (B, N) bool, True = ignore, or None
            (every study must keep at least one token).
    Output: logits (B, num_classes) float, num_classes = len(class_embeddings) in text-query mode.

    Group mode: G = min(num_groups, K) queries, each projected by its own (dim x ceil(K/G)) matrix to
    its slice of the classes. Text mode: query k = Linear(class_embeddings[k]) and one projection
    shared by all classes, so `set_class_embeddings` can swap in classes never trained on.
    """

    class_embeddings: torch.Tensor  # (K, E) buffer, text mode only

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_groups: int = 100,
        dim: int = 768,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_layers: int = 1,
        dropout: float = 0.1,
        learnable_queries: bool = False,
        class_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        self.layers = nn.ModuleList(_DecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.text_mode = class_embeddings is not None
        if class_embeddings is not None:
            if class_embeddings.ndim != 2 or len(class_embeddings) != num_classes:
                raise ValueError(f"class_embeddings must be ({num_classes}, E), got {tuple(class_embeddings.shape)}")
            self.register_buffer("class_embeddings", class_embeddings.detach().float().clone())
            self.query_proj = nn.Linear(class_embeddings.shape[1], dim)
            self.class_fc = nn.Linear(dim, 1)
        else:
            groups = min(num_groups, num_classes)
            self.num_classes = num_classes
            self.queries = nn.Parameter(torch.randn(groups, dim), requires_grad=learnable_queries)
            self.group_weight = nn.Parameter(torch.empty(groups, dim, math.ceil(num_classes / groups)))
            self.group_bias = nn.Parameter(torch.zeros(num_classes))
            nn.init.xavier_normal_(self.group_weight)

    @torch.no_grad()
    def set_class_embeddings(self, class_embeddings: torch.Tensor) -> None:
        """Replace the classes of a text-query head (e.g. with zero-shot class names)."""
        if not self.text_mode:
            raise RuntimeError("set_class_embeddings needs a head built with text queries")
        if class_embeddings.ndim != 2 or class_embeddings.shape[1] != self.class_embeddings.shape[1]:
            raise ValueError(f"class_embeddings must be (K, {self.class_embeddings.shape[1]})")
        self.class_embeddings = class_embeddings.detach().to(self.class_embeddings).clone()

    def per_class_tensors(self) -> tuple[str, ...]:
        """State-dict entries whose rows (axis 0) belong to one class each (cross-schema transfer).

        Text mode: each class's text embedding. Group mode: a class's query, projection and bias, which
        are its own only when every class has a group of its own (K <= num_groups); a group decoding
        several classes cannot be split between schemas.
        """
        if self.text_mode:
            return ("class_embeddings",)
        if self.group_weight.shape[-1] != 1:
            raise ValueError(
                f"the ML-Decoder groups decode {self.group_weight.shape[-1]} classes each; per-class rows need "
                f"one group per class (model.head.num_groups >= {self.num_classes})"
            )
        return ("queries", "group_weight", "group_bias")

    def no_weight_decay(self) -> set[str]:
        """The group queries are query embeddings, not weights to shrink (read by the trainer, as timm's)."""
        return set() if self.text_mode else {"queries"}

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        memory = F.relu(self.embed(as_tokens(features)))
        batch = memory.shape[0]
        queries = self.query_proj(self.class_embeddings) if self.text_mode else self.queries
        decoded = queries.to(memory.dtype).unsqueeze(0).expand(batch, -1, -1)
        for layer in self.layers:
            decoded = layer(decoded, memory, padding_mask)
        if self.text_mode:
            return self.class_fc(decoded).squeeze(-1)
        grouped = torch.einsum("bgd,gdf->bgf", decoded, self.group_weight.to(decoded.dtype))
        return grouped.flatten(1)[:, : self.num_classes] + self.group_bias


@HEADS.decorator("linear")
def _build_linear(
    cfg: HeadConfig, in_features: int, num_classes: int, class_embeddings: torch.Tensor | None
) -> LinearHead:
    return LinearHead(in_features, num_classes, cfg.dropout)


@HEADS.decorator("ml_decoder")
def _build_ml_decoder(
    cfg: HeadConfig, in_features: int, num_classes: int, class_embeddings: torch.Tensor | None
) -> MLDecoderHead:
    return MLDecoderHead(
        in_features,
        num_classes,
        num_groups=cfg.num_groups,
        dim=cfg.decoder_dim,
        num_heads=cfg.num_heads,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        dropout=cfg.decoder_dropout,
        learnable_queries=cfg.learnable_queries,
        class_embeddings=class_embeddings if cfg.text_queries else None,
    )


def build_head(
    cfg: HeadConfig, in_features: int, num_classes: int, class_embeddings: torch.Tensor | None = None
) -> nn.Module:
    """The configured head; `class_embeddings` (K, E) is required when `cfg.text_queries`."""
    if cfg.text_queries and class_embeddings is None:
        raise ValueError("head.text_queries needs class-name embeddings from the text encoder")
    return HEADS.get(cfg.name)(cfg, in_features, num_classes, class_embeddings)
