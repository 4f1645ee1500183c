"""Clinical-context tokens for the study model: indication text and triage vitals, each optional.

Each enabled modality contributes one token per study: the indication through the text encoder, the
vitals either as a CaMChex-style sentence through the same encoder or as standardised numbers plus a
presence mask through a small MLP. A study without that modality (no indication, no vitals at all) gets
the modality's learned placeholder instead, so the fused sequence always has the same layout and the
model can learn what "not recorded" means. Segment embeddings are added by the study model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cxrlt.models.text import TextEncoder
from cxrlt.models.vitals import VITALS, VitalRecord, vitals_tensor, vitals_text

MODALITIES = ("indication", "vitals")


@dataclass
class ContextConfig:
    """indication: add an indication-text token. vitals: "none", "text" (sentence through the text
    encoder) or "numeric" (MLP over standardised values and the presence mask)."""

    indication: bool = False
    vitals: Literal["none", "text", "numeric"] = "none"
    vitals_hidden: int = 128

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, on in zip(MODALITIES, (self.indication, self.vitals != "none")) if on)

    @property
    def needs_text_encoder(self) -> bool:
        return self.indication or self.vitals == "text"


class ClinicalContext(nn.Module):
    """Input:  indication, B strings or None per study (None / blank = absent), or None for all absent;
            vitals, B `{name: value}` records or None per study, or None for all absent.
    Output: (B, M, dim) float tokens, M = len(cfg.modalities), in MODALITIES order; the token of an
            absent modality is exactly that modality's `placeholders[name]`.
    """

    def __init__(self, cfg: ContextConfig, dim: int, text_encoder: TextEncoder | None) -> None:
        super().__init__()
        if not cfg.modalities:
            raise ValueError("ClinicalContext needs at least one modality (indication or vitals)")
        if cfg.needs_text_encoder and text_encoder is None:
            raise ValueError("indication / text vitals need a text encoder")
        self.cfg = cfg
        self.text_encoder = text_encoder
        self.placeholders = nn.ParameterDict({m: nn.Parameter(torch.randn(dim) * 0.02) for m in cfg.modalities})
        if cfg.indication:
            self.indication_proj = nn.Linear(self._encoder().dim, dim)
        self.vitals_proj: nn.Module
        if cfg.vitals == "text":
            self.vitals_proj = nn.Linear(self._encoder().dim, dim)
        elif cfg.vitals == "numeric":
            self.vitals_proj = nn.Sequential(
                nn.Linear(2 * len(VITALS), cfg.vitals_hidden), nn.GELU(), nn.Linear(cfg.vitals_hidden, dim)
            )

    @property
    def num_tokens(self) -> int:
        return len(self.cfg.modalities)

    def _encoder(self) -> TextEncoder:
        """The text encoder, which __init__ made sure is there for every text modality."""
        if self.text_encoder is None:
            raise RuntimeError("this clinical context was built without a text encoder")
        return self.text_encoder

    def forward(
        self,
        batch: int,
        indication: Sequence[str | None] | None = None,
        vitals: Sequence[VitalRecord] | None = None,
    ) -> torch.Tensor:
        tokens = []
        if self.cfg.indication:
            texts = _checked(indication, batch, "indication") or [None] * batch
            tokens.append(self._text_token("indication", [t if t and t.strip() else None for t in texts]))
        if self.cfg.vitals != "none":
            records = _checked(vitals, batch, "vitals") or [None] * batch
            if self.cfg.vitals == "text":
                tokens.append(self._text_token("vitals", [vitals_text(r) for r in records]))
            else:
                tokens.append(self._numeric_vitals(records))
        return torch.stack(tokens, dim=1)

    def _text_token(self, modality: str, texts: list[str | None]) -> torch.Tensor:
        present = [i for i, t in enumerate(texts) if t is not None]
        embedded = self._encoder()([texts[i] for i in present])
        proj = self.indication_proj if modality == "indication" else self.vitals_proj
        return self._fill(modality, proj(embedded.to(self.placeholders[modality].dtype)), present, len(texts))

    def _numeric_vitals(self, records: Sequence[VitalRecord]) -> torch.Tensor:
        placeholder = self.placeholders["vitals"]
        values, mask = vitals_tensor(records)
        values, mask = values.to(placeholder), mask.to(placeholder.device)
        present = mask.any(1).nonzero().flatten().tolist()
        features = torch.cat([values, mask.to(values.dtype)], dim=1)[present]
        return self._fill("vitals", self.vitals_proj(features), present, len(records))

    def _fill(self, modality: str, encoded: torch.Tensor, present: list[int], batch: int) -> torch.Tensor:
        placeholder = self.placeholders[modality]
        out = placeholder.unsqueeze(0).expand(batch, -1)
        # Even with nothing present the (empty) encoding stays in the graph: its projection then gets a zero
        # gradient instead of none, and every rank reduces the same gradients (ZeRO's buckets are built
        # from the parameters that received one; a rank whose batch lacked a modality broke the all-reduce).
        index = torch.tensor(present, dtype=torch.long, device=placeholder.device)
        return out.index_copy(0, index, encoded.to(out.dtype))  # autocast may have lowered `encoded`


def _checked(values: Sequence | None, batch: int, name: str) -> Sequence | None:
    if values is not None and len(values) != batch:
        raise ValueError(f"{name} has {len(values)} entries for a batch of {batch} studies")
    return values
