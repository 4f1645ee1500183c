"""Study-level fusion (CheXFusion / CaMChex): several views plus clinical context -> one prediction.

Each real view goes through the backbone (shared, or one per view type: frontal / lateral / unknown),
its feature map is average-pooled to a token_grid x token_grid grid and projected to `dim`; tokens get a
fixed 2D sin-cos position, a view-slot embedding (optional: without it the model is invariant to view
order), a view-type embedding and the image segment embedding. Context tokens (context.py) follow with
their own segment embeddings. A batch-first, pre-norm transformer encoder fuses the sequence with a key
padding mask over padded view slots, and the head decodes classes from the fused tokens under the same
mask. Padded slots never reach a backbone, are masked in every attention and in the head, so their
content cannot change any output, and no operation mixes studies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from torch import nn

from cxrlt.models.backbones import Backbone
from cxrlt.models.context import ClinicalContext, ContextConfig
from cxrlt.models.text import TextEncoder
from cxrlt.models.views import UNKNOWN_VIEW, VIEW_TYPES
from cxrlt.models.vitals import VitalRecord


@dataclass
class StudyConfig:
    """view_encoders: "shared" (one backbone) or "per_view" (one per VIEW_TYPES entry)."""

    view_encoders: Literal["shared", "per_view"] = "shared"
    max_views: int = 4
    dim: int = 256
    token_grid: int = 4
    slot_embedding: bool = True
    view_type_embedding: bool = True
    layers: int = 2
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    context: ContextConfig = field(default_factory=ContextConfig)

    def __post_init__(self) -> None:
        if self.dim % 4 or self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by 4 (2D sin-cos) and by heads {self.heads}")
        if min(self.max_views, self.token_grid, self.layers) < 1:
            raise ValueError("max_views, token_grid and layers must be at least 1")

    @property
    def num_encoders(self) -> int:
        return 1 if self.view_encoders == "shared" else len(VIEW_TYPES)


class StudyModel(nn.Module):
    """Input:  images (B, V, C, H, W) float, V <= max_views;
            view_padding_mask (B, V) bool, True = padded slot (each study needs one real view);
            view_types (B, V) long in VIEW_TYPES indices, or None (all unknown);
            indication: B strings / None, or None; vitals: B `{name: value}` records / None, or None
            (only read when the context config enables them).
    Output: logits (B, num_classes) float.
    """

    pos_embed: torch.Tensor  # (grid * grid, dim) buffer

    def __init__(
        self, cfg: StudyConfig, encoders: Sequence[Backbone], head: nn.Module, text_encoder: TextEncoder | None
    ) -> None:
        super().__init__()
        if len(encoders) != cfg.num_encoders:
            raise ValueError(f"{cfg.view_encoders} view encoders need {cfg.num_encoders} backbones")
        self.cfg = cfg
        self.encoders = nn.ModuleList(encoders)
        self.view_proj = nn.Linear(encoders[0].num_features, cfg.dim)
        grid = [cfg.token_grid, cfg.token_grid]
        self.register_buffer("pos_embed", build_sincos2d_pos_embed(grid, cfg.dim), persistent=False)
        self.slot_embed = nn.Embedding(cfg.max_views, cfg.dim) if cfg.slot_embedding else None
        self.type_embed = nn.Embedding(len(VIEW_TYPES), cfg.dim) if cfg.view_type_embedding else None
        self.context = ClinicalContext(cfg.context, cfg.dim, text_encoder) if cfg.context.modalities else None
        self.segment_embed = nn.Embedding(1 + len(cfg.context.modalities), cfg.dim)
        for embedding in (self.slot_embed, self.type_embed, self.segment_embed):
            if embedding is not None:
                nn.init.trunc_normal_(embedding.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.dim,
            cfg.heads,
            int(cfg.dim * cfg.mlp_ratio),
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # torch cannot use nested tensors with norm_first (it warns); the key padding mask does the masking.
        self.fusion = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.dim), enable_nested_tensor=False)
        self.head = head

    def no_weight_decay(self) -> set[str]:
        """Slot, view-type and segment embeddings are position-like tables, not weights to shrink."""
        tables = {"slot_embed": self.slot_embed, "type_embed": self.type_embed, "segment_embed": self.segment_embed}
        return {f"{name}.weight" for name, table in tables.items() if table is not None}

    def forward(
        self,
        images: torch.Tensor,
        view_padding_mask: torch.Tensor,
        view_types: torch.Tensor | None = None,
        indication: Sequence[str | None] | None = None,
        vitals: Sequence[VitalRecord] | None = None,
    ) -> torch.Tensor:
        batch, views = images.shape[:2]
        if views > self.cfg.max_views:
            raise ValueError(f"{views} view slots exceed max_views = {self.cfg.max_views}")
        if view_padding_mask.shape != (batch, views):
            raise ValueError(f"view_padding_mask {tuple(view_padding_mask.shape)} does not match ({batch}, {views})")
        if view_padding_mask.all(1).any():
            raise ValueError("every study needs at least one real (unpadded) view")
        if view_types is None:
            view_types = torch.full((batch, views), UNKNOWN_VIEW, dtype=torch.long, device=images.device)
        tokens = self._view_tokens(images, view_padding_mask, view_types)
        padding = view_padding_mask.repeat_interleave(tokens.shape[1] // views, dim=1)
        if self.context is not None:
            context = self.context(batch, indication, vitals) + self.segment_embed.weight[1:]
            tokens = torch.cat([tokens, context.to(tokens.dtype)], dim=1)
            padding = F.pad(padding, (0, context.shape[1]), value=False)
        return self.head(self.fusion(tokens, src_key_padding_mask=padding), padding)

    def _view_tokens(self, images: torch.Tensor, padding: torch.Tensor, view_types: torch.Tensor) -> torch.Tensor:
        """(B, V * grid * grid, dim) tokens; padded slots hold only embeddings (masked downstream)."""
        batch, views = padding.shape
        grid = self.cfg.token_grid
        flat_images, flat_types, flat_real = images.flatten(0, 1), view_types.flatten(), ~padding.flatten()
        indices, encoded = [], []
        for view_type, encoder in enumerate(self.encoders):
            select = flat_real if len(self.encoders) == 1 else flat_real & (flat_types == view_type)
            index = select.nonzero().flatten()
            if index.numel():
                features = F.adaptive_avg_pool2d(encoder(flat_images[index]), grid)
                indices.append(index)
                encoded.append(self.view_proj(features.flatten(2).transpose(1, 2)))
        # Zeros take the projection's dtype, which autocast decides (bf16 on GPU), not the weights'.
        real = torch.cat(encoded)
        tokens = real.new_zeros(batch * views, *real.shape[1:]).index_copy(0, torch.cat(indices), real)
        tokens = tokens.view(batch, views, grid * grid, -1) + self.pos_embed.to(tokens.dtype)
        if self.slot_embed is not None:
            tokens = tokens + self.slot_embed.weight[:views, None]
        if self.type_embed is not None:
            tokens = tokens + self.type_embed(view_types)[:, :, None]
        return (tokens + self.segment_embed.weight[0]).flatten(1, 2)
