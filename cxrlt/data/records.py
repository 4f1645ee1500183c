"""What a source reader hands the shard writer: one `Record` per image, labels already in target order.

Source readers (cxrlt.data.sources) differ in file layout and label spelling; past them every image is
a Record and every label matrix is in the target schema's class order with 1 / 0 / -1 (unknown).
Label cells are validated here so every source reports a bad value the same way: file, row, column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxrlt.errors import InputError
from cxrlt.labels import UNKNOWN, Schema, harmonise_labels
from cxrlt.tables import parse_labels

UncertainPolicy = Literal["unknown", "positive", "negative"]
_POLICY_VALUE = {"unknown": UNKNOWN, "positive": 1.0, "negative": 0.0}


@dataclass
class Record:
    """One image of a source. `path` is absolute, or None when the caller supplies pixels another way."""

    image_id: str
    study_id: str
    patient_id: str
    source: str
    labels: np.ndarray
    path: str | None = None
    view: str = "UNKNOWN"
    age: float | None = None
    sex: str | None = None
    split: str | None = None
    indication: str | None = None
    vitals: dict[str, float] = field(default_factory=dict)
    # The study report's FINDINGS and IMPRESSION text (MIMIC-CXR reports), for report-supervised stages.
    findings: str | None = None
    impression: str | None = None


@dataclass
class SourceTable:
    """The records of one source plus what the index's `sources` entry says about where they came from."""

    name: str
    records: list[Record]
    files: list[str]
    notes: dict[str, object] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "files": self.files, "records": len(self.records), **self.notes}


def parse_label_columns(
    frame: pd.DataFrame,
    columns: Sequence[str],
    file: str | Path,
    *,
    uncertain: UncertainPolicy = "unknown",
    blank: UncertainPolicy = "unknown",
) -> np.ndarray:
    """Label cells (1, 0, -1 or blank) as an (N, len(columns)) float32 matrix, -1 and blank cells
    mapped by their policy; cxrlt.tables.parse_labels names the file, line and column of a bad cell."""
    return parse_labels(frame, columns, file, uncertain=_POLICY_VALUE[uncertain], blank=_POLICY_VALUE[blank])


def to_target(labels: np.ndarray, columns: Sequence[str], naming: str, target: Schema, file: str) -> np.ndarray:
    """Place columns (named under `naming`) into `target` order; classes the file lacks become -1."""
    source = Schema(name=str(file), classes=tuple(columns), description="label columns", naming=naming)
    return harmonise_labels(labels, source, target)


def optional_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def optional_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def read_table(path: str | Path, **kwargs: object) -> pd.DataFrame:
    """Read a CSV (plain or .gz) as strings, so label and id cells reach validation unconverted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], **kwargs)
    except (ValueError, pd.errors.ParserError) as e:
        raise InputError(f"{path}: cannot read as CSV: {e}") from None
