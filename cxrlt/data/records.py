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

# Spreadsheet rows: the header is line 1, so data row i (0-based) is line i + 2.
HEADER_LINES = 1
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
    """Parse label cells (1, 0, -1 or blank) into an (N, len(columns)) float32 matrix.

    -1 (uncertain) and blank cells become the value their policy names. Any other value is an
    InputError naming the file, the spreadsheet row and the column.
    """
    out = np.empty((len(frame), len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        blank_mask = raw.isna().to_numpy() | raw.astype(str).str.strip().isin(("", "nan", "NaN")).to_numpy()
        bad = ~blank_mask & ~np.isin(values, (1.0, 0.0, -1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{file}: row {row + HEADER_LINES + 1}, column {column!r}: label value {raw.iloc[row]!r} "
                f"is not 1, 0, -1 or blank ({int(bad.sum())} such cells in this column)"
            )
        col = np.where(values == -1.0, _POLICY_VALUE[uncertain], values)
        out[:, j] = np.where(blank_mask, _POLICY_VALUE[blank], col)
    return out


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


def require_columns(frame: pd.DataFrame, columns: Sequence[str], file: str | Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{file}: missing column(s) {missing}; found {list(frame.columns)}")


def read_table(path: str | Path, **kwargs: object) -> pd.DataFrame:
    """Read a CSV (plain or .gz) as strings, so label and id cells reach validation unconverted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], **kwargs)
    except (ValueError, pd.errors.ParserError) as e:
        raise InputError(f"{path}: cannot read as CSV: {e}") from None
