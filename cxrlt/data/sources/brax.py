"""BRAX (PhysioNet brax 1.1.0): `master_spreadsheet_update.csv` + its DICOM and PNG images.

One row per image: DicomPath and PngPath (relative to the release root), PatientID, AccessionNumber (the
study), ViewPosition, optionally PatientSex and PatientAge (5-year groups, "85 or more"), and the 14
CheXpert observations (labelled by the CheXpert labeler adapted to Portuguese reports), each 1, 0, -1
(uncertain) or blank (not mentioned). As for CheXpert, the uncertain policy is a choice (default
unknown) and blank defaults to negative. `image` picks which copy is sharded: "png" (default, cheaper
to decode) or "dicom" (cxrlt.data.dicom windows it). Image ids are DicomPath without its suffix, so
either copy gives the same ids. No split is shipped: `cxrlt shard` splits by patient.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from cxrlt.data.records import (
    Record,
    SourceTable,
    UncertainPolicy,
    optional_text,
    parse_label_columns,
    read_table,
    to_target,
)
from cxrlt.data.shardset import normalise_sex, normalise_view
from cxrlt.errors import InputError
from cxrlt.labels import CHEXPERT_14, Schema
from cxrlt.tables import line_of, require_columns

ImageCopy = Literal["png", "dicom"]
IMAGE_COLUMNS: dict[str, str] = {"png": "PngPath", "dicom": "DicomPath"}
ID_COLUMNS = ("DicomPath", "PngPath", "PatientID", "AccessionNumber", "ViewPosition")
_AGE = re.compile(r"^\s*(\d+)\s*(?:(?:-|to)\s*(\d+)|or more|\+)?\s*$", re.IGNORECASE)


def brax_age(value: object) -> float | None:
    """'45' -> 45, '40-44' -> 42 (the group's middle), '85 or more' -> 85; blank or other text -> None."""
    text = optional_text(value)
    match = _AGE.match(text) if text else None
    if match is None:
        return None
    low, high = match.groups()
    return (int(low) + int(high)) / 2 if high else float(low)


def read_brax(
    table: str | Path,
    images: str | Path,
    target: Schema,
    image: ImageCopy = "png",
    uncertain: UncertainPolicy = "unknown",
    blank: UncertainPolicy = "negative",
) -> SourceTable:
    if image not in IMAGE_COLUMNS:
        raise InputError(f"--image-copy {image!r}: expected one of {tuple(IMAGE_COLUMNS)}")
    frame = read_table(table)
    require_columns(frame, (*ID_COLUMNS, *CHEXPERT_14.classes), table)
    native = parse_label_columns(frame, CHEXPERT_14.classes, table, uncertain=uncertain, blank=blank)
    labels = to_target(native, CHEXPERT_14.classes, CHEXPERT_14.naming, target, str(table))
    optional = {c: frame[c] if c in frame.columns else [None] * len(frame) for c in ("PatientSex", "PatientAge")}
    rows = zip(*(frame[c] for c in ID_COLUMNS), optional["PatientSex"], optional["PatientAge"])
    records = []
    for i, (dicom_path, png_path, patient, accession, view, sex, age) in enumerate(rows):
        cells = {"DicomPath": dicom_path, "PatientID": patient, "AccessionNumber": accession}
        cells[IMAGE_COLUMNS[image]] = png_path if image == "png" else dicom_path
        blank_cell = next((c for c, v in cells.items() if optional_text(v) is None), None)
        if blank_cell is not None:
            raise InputError(f"{table}: line {line_of(i)}, column {blank_cell!r}: blank")
        relative = str(png_path if image == "png" else dicom_path)
        records.append(
            Record(
                image_id="_".join(Path(str(dicom_path)).with_suffix("").parts),
                study_id=str(accession),
                patient_id=str(patient),
                source="brax",
                labels=labels[i],
                path=os.path.join(images, relative),
                view=normalise_view(view),
                age=brax_age(age),
                sex=normalise_sex(sex),
            )
        )
    notes: dict[str, object] = {"image_copy": image, "uncertain": uncertain, "blank": blank}
    return SourceTable("brax", records, [str(table), str(images)], notes)
