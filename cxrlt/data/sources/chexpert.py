"""CheXpert: its train/valid CSV (`Path`, Sex, Age, Frontal/Lateral, AP/PA, 14 observations).

Observation cells are 1, 0, -1 (uncertain) or blank (not mentioned). The uncertain policy is a choice
(unknown / positive / negative; U-Ignore, U-Ones, U-Zeros in the CheXpert paper); blank defaults to
negative, CheXpert's own reading of "not mentioned". Rows under valid/ form the dev split; train/ rows
get a patient-level split.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrlt.data.records import (
    Record,
    SourceTable,
    UncertainPolicy,
    optional_float,
    parse_label_columns,
    read_table,
    to_target,
)
from cxrlt.data.shardset import normalise_sex, normalise_view
from cxrlt.errors import InputError
from cxrlt.labels import CHEXPERT_14, Schema
from cxrlt.tables import line_of, require_columns

META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_PATH = re.compile(r"(?:^|/)(train|valid)/(patient\d+)/(study\d+)/([^/]+)\.\w+$")


def read_chexpert(
    table: str | Path,
    images: str | Path | None,
    target: Schema,
    uncertain: UncertainPolicy = "unknown",
    blank: UncertainPolicy = "negative",
) -> SourceTable:
    frame = read_table(table)
    require_columns(frame, (*META_COLUMNS, *CHEXPERT_14.classes), table)
    native = parse_label_columns(frame, CHEXPERT_14.classes, table, uncertain=uncertain, blank=blank)
    labels = to_target(native, CHEXPERT_14.classes, "chexpert", target, str(table))
    records = []
    rows = frame[list(META_COLUMNS)].itertuples(index=False, name=None)
    for i, (path, sex, age, frontal, projection) in enumerate(rows):
        match = _PATH.search(str(path))
        if match is None:
            raise InputError(
                f"{table}: line {line_of(i)}, column 'Path': {path!r} is not .../train|valid/patientN/studyN/VIEW.jpg"
            )
        part, patient, study, view_name = match.groups()
        records.append(
            Record(
                image_id=f"{patient}_{study}_{view_name}",
                study_id=f"{patient}_{study}",
                patient_id=patient,
                source="chexpert",
                labels=labels[i],
                path=str(Path(images) / path) if images is not None else None,
                view=normalise_view(projection if str(frontal) == "Frontal" else "LATERAL"),
                age=optional_float(age),
                sex=normalise_sex(sex),
                split="dev" if part == "valid" else None,
            )
        )
    notes: dict[str, object] = {"uncertain": uncertain, "blank": blank}
    return SourceTable("chexpert", records, [str(table)] + ([str(images)] if images is not None else []), notes)
