"""Label sets -> the UNet's cross-attention context, with a "dropped" condition for classifier-free guidance.

Two conditioners share one call, `(labels (B, K) 1/0/-1, drop (B,) bool) -> context (B, L, D)`:
- `LabelTokens` (trained from scratch): one token per class, a learned class embedding plus a learned
  state embedding (negative / positive / unknown / dropped). Every class keeps its token whatever its
  state, so the model sees "Hernia absent" as well as "Hernia present", and unknown labels (a source
  that never graded the class) stay unknown instead of posing as negatives.
- `PromptEncoder` (fine-tuning a local Stable Diffusion folder): a text prompt naming the positive
  findings, through the folder's frozen CLIP text encoder; the dropped condition is the empty prompt,
  as in Stable Diffusion's own training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NEGATIVE, POSITIVE, UNKNOWN, DROPPED = range(4)


def label_states(labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """(B, K) int64 state per class: label 1 -> POSITIVE, 0 -> NEGATIVE, else UNKNOWN; DROPPED rows."""
    states = torch.full(labels.shape, UNKNOWN, dtype=torch.int64, device=labels.device)
    states[labels == 1] = POSITIVE
    states[labels == 0] = NEGATIVE
    states[drop.to(labels.device)] = DROPPED
    return states


class LabelTokens(nn.Module):
    """Input: labels (B, K) float 1/0/-1, drop (B,) bool. Output: context (B, K, dim)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.classes = nn.Embedding(num_classes, dim)
        self.states = nn.Embedding(4, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        tokens = self.classes.weight.unsqueeze(0) + self.states(label_states(labels, drop))
        return self.norm(tokens)


def label_prompt(labels: Sequence[float], classes: Sequence[str], template: str, empty: str) -> str:
    """The prompt of one label set: `template` with its positive findings, or `empty` when it has none."""
    found = [name.replace("_", " ") for name, value in zip(classes, labels) if value == 1]
    return template.format(", ".join(found)) if found else empty


class PromptEncoder(nn.Module):
    """A frozen CLIP tokenizer + text encoder over label prompts. Output: (B, max_length, hidden)."""

    def __init__(self, tokenizer, text_encoder: nn.Module, classes: Sequence[str], template: str, empty: str) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.classes = tuple(classes)
        self.template = template
        self.empty = empty

    def prompts(self, labels: torch.Tensor, drop: torch.Tensor) -> list[str]:
        return [
            "" if dropped else label_prompt(row, self.classes, self.template, self.empty)
            for row, dropped in zip(labels.tolist(), drop.tolist())
        ]

    @torch.no_grad()
    def forward(self, labels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        ids = self.tokenizer(
            self.prompts(labels, drop),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(ids.to(device))[0]
