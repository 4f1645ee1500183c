"""PadChest: its 160k-row label CSV, labels by name (`Labels` holds a Python-style list of strings).

Labels are report-derived and complete for the report, so a PadChest class absent from an image's
list is negative; a target class PadChest has no name for is unknown (-1). Rows with no label list
at all (103 in the release) are unknown for every class. Images live under `images/ImageDir/ImageID`
(the release's numbered zip folders) or directly under `images/`.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np

from cxrlt.data.records import Record, SourceTable, optional_float, read_table
from cxrlt.data.shardset import normalise_sex, normalise_view
from cxrlt.errors import InputError
from cxrlt.labels import PADCHEST, UNKNOWN, Schema, harmonisation_index
from cxrlt.tables import line_of, require_columns

COLUMNS = (
    "ImageID",
    "ImageDir",
    "StudyDate_DICOM",
    "StudyID",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "Projection",
    "Labels",
)
LABELS_COLUMN = "Labels"


def _label_names(cell: object, table: str | Path, row: int) -> list[str] | None:
    if not isinstance(cell, str) or cell.strip().lower() in ("", "nan"):
        return None
    try:
        names = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(
            f"{table}: line {line_of(row)}, column {LABELS_COLUMN!r}: {cell[:80]!r} is not a list of names"
        )
    return [n.strip() for n in names if n.strip()]


def padchest_labels(cells: list[object], table: str | Path, target: Schema) -> np.ndarray:
    """Label lists -> (N, len(target)) in target order: 1 named, 0 PadChest-known but unnamed, -1 else."""
    to_target = harmonisation_index(PADCHEST, target)
    target_of = {PADCHEST.classes[src]: t for t, src in enumerate(to_target) if src >= 0}
    base = np.where(to_target >= 0, 0.0, UNKNOWN).astype(np.float32)
    out = np.empty((len(cells), len(target)), dtype=np.float32)
    for i, cell in enumerate(cells):
        names = _label_names(cell, table, i)
        if names is None:
            out[i] = UNKNOWN
            continue
        out[i] = base
        for name in names:
            if name not in target_of:
                try:
                    PADCHEST.index(name)
                except KeyError as e:
                    raise InputError(f"{table}: line {line_of(i)}, column {LABELS_COLUMN!r}: {e.args[0]}") from None
                continue
            out[i, target_of[name]] = 1.0
    return out


def _age(study_date: object, birth_year: object) -> float | None:
    year, birth = optional_float(str(study_date)[:4]), optional_float(birth_year)
    return None if year is None or birth is None else year - birth


def read_padchest(table: str | Path, images: str | Path | None, target: Schema) -> SourceTable:
    frame = read_table(table, usecols=lambda c: c in COLUMNS)
    require_columns(frame, COLUMNS, table)
    labels = padchest_labels(frame[LABELS_COLUMN].tolist(), table, target)
    by_dir = images is not None and any(p.is_dir() and p.name.isdigit() for p in Path(images).iterdir())
    records = []
    rows = frame[list(COLUMNS[:-1])].itertuples(index=False, name=None)
    for i, (image, folder, date, study, patient, birth, sex, projection) in enumerate(rows):
        path = None
        if images is not None:
            path = os.path.join(images, str(folder), image) if by_dir else os.path.join(images, image)
        records.append(
            Record(
                image_id=Path(image).stem,
                study_id=str(study),
                patient_id=str(patient),
                source="padchest",
                labels=labels[i],
                path=path,
                view=normalise_view(projection),
                age=_age(date, birth),
                sex=normalise_sex(sex),
            )
        )
    files = [str(table)] + ([str(images)] if images is not None else [])
    return SourceTable("padchest", records, files, {"unlabelled_rows": int((labels == UNKNOWN).all(axis=1).sum())})
