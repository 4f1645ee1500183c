"""Triage vitals: the recognised measurements, their CaMChex-style sentence and numeric encoding.

A study's vitals arrive as the shard json's `{name: value}` mapping (MIMIC-IV-ED triage names). Keys not
listed in VITALS (pain, acuity, ...) are not used; None, NaN and unparsable values count as missing.
The sentence form lists the present measurements with units so a text encoder can read them; the
numeric form standardises each value and returns a presence mask beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

VitalRecord = Mapping[str, Any] | None


@dataclass(frozen=True)
class Vital:
    key: str
    label: str
    unit: str
    mean: float
    std: float


# Standardisation constants are typical adult ED triage figures (MIMIC-IV-ED), not fitted per dataset;
# they only need to put every input on a comparable scale for the MLP.
VITALS: tuple[Vital, ...] = (
    Vital("temperature", "temperature", "F", 98.1, 1.0),
    Vital("heartrate", "heart rate", "bpm", 85.0, 18.0),
    Vital("resprate", "respiratory rate", "breaths/min", 18.0, 3.0),
    Vital("o2sat", "oxygen saturation", "%", 98.0, 3.0),
    Vital("sbp", "systolic blood pressure", "mmHg", 135.0, 25.0),
    Vital("dbp", "diastolic blood pressure", "mmHg", 78.0, 15.0),
    Vital("gender", "gender", "", 0.5, 0.5),
)
_GENDER = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}


def vital_value(vital: Vital, raw: Any) -> float | None:
    """The numeric value of one measurement (gender: M = 1, F = 0), or None when missing."""
    if raw is None:
        return None
    if vital.key == "gender":
        return _GENDER.get(str(raw).strip().lower())
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def vitals_text(record: VitalRecord) -> str | None:
    """'Triage vitals: temperature 98.6 F, heart rate 88 bpm, ..., gender female.' or None if none."""
    parts = []
    for vital in VITALS:
        value = vital_value(vital, (record or {}).get(vital.key))
        if value is None:
            continue
        if vital.key == "gender":
            parts.append(f"gender {'male' if value else 'female'}")
        else:
            parts.append(f"{vital.label} {value:g} {vital.unit}")
    return f"Triage vitals: {', '.join(parts)}." if parts else None


def vitals_tensor(records: Sequence[VitalRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised values (B, len(VITALS)) float32 with 0 where missing, and presence (B, len(VITALS)) bool."""
    values = torch.zeros(len(records), len(VITALS))
    present = torch.zeros(len(records), len(VITALS), dtype=torch.bool)
    for i, record in enumerate(records):
        for j, vital in enumerate(VITALS):
            value = vital_value(vital, (record or {}).get(vital.key))
            if value is not None:
                values[i, j] = (value - vital.mean) / vital.std
                present[i, j] = True
    return values, present
