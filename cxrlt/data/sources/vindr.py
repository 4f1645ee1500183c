"""VinDr-CXR (PhysioNet vindr-cxr 1.0.0): DICOM images + radiologist label CSVs.

Layout: `annotations/image_labels_train.csv` has one row per (image_id, rad_id): each training image
was labelled independently by 3 of 17 radiologists, 0/1 per label (the 28 columns of
cxrlt.labels.VINDR_CXR). `annotations/image_labels_test.csv` has one consensus row per test image
(5 radiologists), without rad_id. Images are `train/<image_id>.dicom` and `test/<image_id>.dicom` under
the release root (decoded by cxrlt.data.dicom: windowed, MONOCHROME1 inverted).

The training rows are merged per image by a documented choice (`merge`):
- "majority": positive when more than half of the image's radiologists marked it (2 of 3), the
  VinBigData / VinDr papers' reading;
- "any": positive when any radiologist marked it (more positives, noisier); "No finding" then stays
  positive only when no finding is positive, so the merged row never says both.
Test rows are the consensus as given and form the "test" split; training images get the patient-level
split of `cxrlt shard` (VinDr releases no patient ids, so each image is its own patient). Every image is
a PA view. Labels map onto CXR-LT 2024 names where the meaning agrees (cxrlt.labels ALIASES["vindr"]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxrlt.data.records import Record, SourceTable, parse_label_columns, read_table, to_target
from cxrlt.errors import InputError
from cxrlt.labels import VINDR_CXR, Schema
from cxrlt.tables import line_of, require_columns

Merge = Literal["majority", "any"]
MERGES: tuple[Merge, ...] = ("majority", "any")
NO_FINDING = "No finding"
# Spellings of the same column seen across copies of the release.
_COLUMN_SPELLINGS = {"Other disease": "Other diseases"}


def _labels(frame: pd.DataFrame, table: str | Path) -> np.ndarray:
    """The 28 label columns as an (N, 28) 0/1 matrix; any other value names its line and column."""
    values = parse_label_columns(frame, VINDR_CXR.classes, table)
    bad = np.argwhere(~np.isin(values, (0.0, 1.0)))
    if len(bad):
        row, column = (int(i) for i in bad[0])
        cell = frame[VINDR_CXR.classes[column]].iloc[row]
        raise InputError(
            f"{table}: line {line_of(row)}, column {VINDR_CXR.classes[column]!r}: VinDr labels are 0 or 1, got {cell!r}"
        )
    return values


def merge_readers(labels: np.ndarray, merge: Merge) -> np.ndarray:
    """One image's (readers, 28) 0/1 rows -> its merged (28,) row."""
    if merge == "majority":
        return (labels.sum(axis=0) * 2 > len(labels)).astype(np.float32)
    merged = labels.max(axis=0).astype(np.float32)
    no_finding = VINDR_CXR.index(NO_FINDING)
    findings = np.delete(merged, no_finding)
    merged[no_finding] = float(not findings.any())
    return merged


def _read(table: str | Path, id_columns: tuple[str, ...]) -> pd.DataFrame:
    frame = read_table(table).rename(columns=_COLUMN_SPELLINGS)
    require_columns(frame, (*id_columns, *VINDR_CXR.classes), table)
    blank = frame["image_id"].isna().to_numpy()
    if blank.any():
        raise InputError(f"{table}: line {line_of(int(np.flatnonzero(blank)[0]))}, column 'image_id': blank")
    return frame


def read_vindr(
    train_table: str | Path | None,
    test_table: str | Path | None,
    images: str | Path,
    target: Schema,
    merge: Merge = "majority",
) -> SourceTable:
    """Records of the training images (merged over radiologists) and of the test images (consensus)."""
    if merge not in MERGES:
        raise InputError(f"--merge {merge!r}: expected one of {MERGES}")
    if train_table is None and test_table is None:
        raise InputError("source vindr-cxr needs --table (image_labels_train.csv) and/or --test-table")
    rows: list[tuple[str, np.ndarray, str | None, str]] = []  # image id, VinDr labels, split, folder
    readers: list[int] = []
    if train_table is not None:
        frame = _read(train_table, ("image_id", "rad_id"))
        values = _labels(frame, train_table)
        for image_id, positions in frame.groupby("image_id", sort=True).indices.items():
            rows.append((str(image_id), merge_readers(values[positions], merge), None, "train"))
            readers.append(len(positions))
    if test_table is not None:
        frame = _read(test_table, ("image_id",))
        values = _labels(frame, test_table)
        repeated = frame["image_id"][frame["image_id"].duplicated()]
        if len(repeated):
            raise InputError(f"{test_table}: image {repeated.iloc[0]!r} has two consensus rows")
        rows += [(str(i), values[k], "test", "test") for k, i in enumerate(frame["image_id"])]
    labels = to_target(np.stack([r[1] for r in rows]), VINDR_CXR.classes, "vindr", target, "vindr-cxr")
    records = [
        Record(
            image_id=image_id,
            study_id=image_id,
            patient_id=image_id,
            source="vindr-cxr",
            labels=labels[i],
            path=os.path.join(images, folder, f"{image_id}.dicom"),
            view="PA",
            split=split,
        )
        for i, (image_id, _, split, folder) in enumerate(rows)
    ]
    files = [str(t) for t in (train_table, test_table, images) if t is not None]
    notes: dict[str, object] = {"merge": merge, "readers_per_training_image": sorted(set(readers))}
    return SourceTable("vindr-cxr", records, files, notes)
