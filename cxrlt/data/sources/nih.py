"""NIH ChestX-ray14: `Data_Entry_2017*.csv` + an image folder (any nesting, e.g. images_001/images/)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxrlt.data.records import Record, SourceTable, optional_float, read_table, to_target
from cxrlt.data.shardset import normalise_sex, normalise_view
from cxrlt.errors import InputError
from cxrlt.labels import NIH_14, Schema
from cxrlt.tables import line_of, require_columns

NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position")
NO_FINDING = "No Finding"
FINDINGS_COLUMN = "Finding Labels"


def index_images(folder: Path) -> dict[str, str]:
    """File name -> path for every file under `folder` (NIH ships its images split over 12 folders)."""
    found: dict[str, str] = {}
    for root, _, files in os.walk(folder):
        for name in files:
            found.setdefault(name, os.path.join(root, name))
    return found


def finding_matrix(findings: list[str], file: str | Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """'A|B' cells -> (N, 15) 0/1 over the NIH classes plus 'No Finding'; an unknown name is an error."""
    columns = (*NIH_14.classes, NO_FINDING)
    position = {name: j for j, name in enumerate(columns)}
    out = np.zeros((len(findings), len(columns)), dtype=np.float32)
    for i, cell in enumerate(findings):
        for name in filter(None, (part.strip() for part in str(cell).split("|"))):
            if name not in position:
                raise InputError(
                    f"{file}: line {line_of(i)}, column {FINDINGS_COLUMN!r}: unknown finding {name!r} "
                    f"(known: {', '.join(columns)})"
                )
            out[i, position[name]] = 1.0
    return out, columns


def read_nih(table: str | Path, images: str | Path | None, target: Schema, source: str = "nih") -> SourceTable:
    frame = read_table(table)
    require_columns(frame, NIH_COLUMNS, table)
    missing_findings = frame[FINDINGS_COLUMN].isna().to_numpy()
    if missing_findings.any():
        row = int(np.flatnonzero(missing_findings)[0])
        raise InputError(f"{table}: line {line_of(row)}, column {FINDINGS_COLUMN!r}: blank finding list")
    native, columns = finding_matrix(frame[FINDINGS_COLUMN].tolist(), table)
    labels = to_target(native, columns, "nih", target, str(table))
    paths = index_images(Path(images)) if images is not None else {}
    records = []
    for i, (name, _, patient, age, sex, view) in enumerate(frame[list(NIH_COLUMNS)].itertuples(index=False, name=None)):
        image_id = Path(str(name)).stem
        records.append(
            Record(
                image_id=image_id,
                study_id=image_id,
                patient_id=str(patient),
                source=source,
                labels=labels[i],
                path=paths.get(str(name), os.path.join(images, str(name))) if images is not None else None,
                view=normalise_view(view),
                age=optional_float(str(age).rstrip("Yy")),
                sex=normalise_sex(sex),
            )
        )
    return SourceTable(source, records, [str(table)] + ([str(images)] if images is not None else []))
