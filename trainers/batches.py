"""Reader batches (cxrlt.data.decoding's contract) -> model inputs (cxrlt.models' contracts).

The two sides were designed apart and differ on purpose in three places, reconciled only here:
- views: the reader keeps the shard's fine vocabulary (pad, PA, AP, LATERAL, LL, OTHER, UNKNOWN) for
  ordering and reporting; the study model embeds the coarse frontal / lateral / unknown;
- masks: the reader's `view_mask` is True for a present view, the model's `view_padding_mask` True
  for a padded slot (torch attention's convention);
- clinical context: the reader gives a vitals tensor in raw units with a presence mask and the sex
  index; the model reads `{name: value}` records (gender included, as CaMChex's sentence does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cxrlt.data.shardset import SEXES, VIEW_TYPES, VITALS
from cxrlt.models.views import view_type_index

# Reader view id -> model view type, built from the names so neither vocabulary can drift silently.
_COARSE_VIEW = torch.tensor([view_type_index(name) for name in VIEW_TYPES], dtype=torch.long)


@dataclass
class ModelInputs:
    """Positional and keyword arguments of the model's forward, already on the device."""

    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, Any]


def vitals_records(vitals: torch.Tensor, present: torch.Tensor, sex: torch.Tensor) -> list[dict[str, Any]]:
    """One `{name: value}` record per study, only measured values, gender from the sex index."""
    records = []
    for values, mask, sex_index in zip(vitals.tolist(), present.tolist(), sex.tolist()):
        record: dict[str, Any] = {name: value for name, value, on in zip(VITALS, values, mask) if on}
        if SEXES[sex_index] in ("F", "M"):
            record["gender"] = SEXES[sex_index]
        records.append(record)
    return records


def model_inputs(batch: dict[str, Any], level: str, device: torch.device) -> ModelInputs:
    if level == "image":
        return ModelInputs((batch["image"].to(device, non_blocking=True),), {})
    return ModelInputs(
        (batch["images"].to(device, non_blocking=True),),
        {
            "view_padding_mask": (~batch["view_mask"]).to(device),
            "view_types": _COARSE_VIEW[batch["view_type"]].to(device),
            "indication": [text or None for text in batch["indication"]],
            "vitals": vitals_records(batch["vitals"], batch["vitals_mask"], batch["sex"]),
        },
    )


def batch_size(batch: dict[str, Any]) -> int:
    return len(batch["labels"])
