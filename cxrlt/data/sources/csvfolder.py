"""Any folder of images + a CSV, described by a column map (`CsvColumns`).

Label columns are named in the target schema's spelling (or listed explicitly, spelled under `naming`,
default the target's); their cells must be 1, 0, -1 or blank, with -1 and blank read by configurable
policies (default: unknown). A label column the target schema cannot place is an error, never dropped.
A `split` column, when mapped, must hold train / dev / test (valid, val and validation mean dev).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cxrlt.data.records import (
    Record,
    SourceTable,
    UncertainPolicy,
    optional_float,
    optional_text,
    parse_label_columns,
    read_table,
    to_target,
)
from cxrlt.data.shardset import SPLITS, normalise_sex, normalise_view
from cxrlt.errors import InputError
from cxrlt.labels import ALIASES, Schema, harmonisation_index
from cxrlt.tables import line_of, require_columns

_SPLIT_SPELLINGS = {"train": "train", "dev": "dev", "valid": "dev", "val": "dev", "validation": "dev", "test": "test"}


@dataclass
class CsvColumns:
    """Which CSV column holds each field; optional fields are None when the table lacks them."""

    path: str = "path"
    image_id: str | None = None
    patient_id: str = "patient_id"
    study_id: str | None = None
    view: str | None = None
    age: str | None = None
    sex: str | None = None
    split: str | None = None
    indication: str | None = None
    labels: list[str] | None = None
    naming: str | None = None  # None: the target schema's spelling
    uncertain: UncertainPolicy = "unknown"
    blank: UncertainPolicy = "unknown"


def _split(value: object, table: str | Path, row: int, column: str) -> str | None:
    text = optional_text(value)
    if text is None:
        return None
    if text.lower() not in _SPLIT_SPELLINGS:
        raise InputError(f"{table}: line {line_of(row)}, column {column!r}: split {text!r} is not one of {SPLITS}")
    return _SPLIT_SPELLINGS[text.lower()]


def _require_placed(label_columns: list[str], naming: str, target: Schema, table: str | Path) -> None:
    """Every label column must land on a target class: one that does not would become unknown on every
    row, silently, while the index still lists the class."""
    if naming not in ALIASES:
        raise InputError(f"--columns naming={naming!r}: expected one of {', '.join(ALIASES)}")
    source = Schema(name=str(table), classes=tuple(label_columns), description="label columns", naming=naming)
    placed = set(harmonisation_index(source, target).tolist())
    unplaced = [c for i, c in enumerate(label_columns) if i not in placed]
    if unplaced:
        raise InputError(
            f"{table}: label column(s) {', '.join(map(repr, unplaced))} match no class of {target.name!r} "
            f"under naming {naming!r} (or repeat another column's class); pass the naming the columns "
            f"follow (--columns naming=..., one of {', '.join(ALIASES)}) or leave them out with --label-columns"
        )


def read_csv_folder(table: str | Path, images: str | Path, target: Schema, columns: CsvColumns) -> SourceTable:
    frame = read_table(table)
    fields = {
        "path": columns.path,
        "image_id": columns.image_id,
        "patient_id": columns.patient_id,
        "study_id": columns.study_id,
        "view": columns.view,
        "age": columns.age,
        "sex": columns.sex,
        "split": columns.split,
        "indication": columns.indication,
    }
    mapped = {field: column for field, column in fields.items() if column is not None}
    require_columns(frame, list(mapped.values()), table)
    label_columns = columns.labels or [c for c in target.classes if c in frame.columns]
    if not label_columns:
        raise InputError(f"{table}: no label columns named like the classes of {target.name!r}; list them explicitly")
    require_columns(frame, label_columns, table)
    naming = columns.naming or target.naming
    _require_placed(label_columns, naming, target, table)
    native = parse_label_columns(frame, label_columns, table, uncertain=columns.uncertain, blank=columns.blank)
    labels = to_target(native, label_columns, naming, target, str(table))
    records = []
    for i, row in enumerate(frame[list(mapped.values())].itertuples(index=False, name=None)):
        cell = dict(zip(mapped, row))
        rel = optional_text(cell["path"])
        if rel is None:
            raise InputError(f"{table}: line {line_of(i)}, column {columns.path!r}: blank image path")
        image_id = optional_text(cell.get("image_id")) or Path(rel).stem
        records.append(
            Record(
                image_id=image_id,
                study_id=optional_text(cell.get("study_id")) or image_id,
                patient_id=optional_text(cell["patient_id"]) or image_id,
                source=Path(table).stem,
                labels=labels[i],
                path=os.path.join(images, rel),
                view=normalise_view(cell.get("view")),
                age=optional_float(cell.get("age")),
                sex=normalise_sex(cell.get("sex")),
                split=_split(cell["split"], table, i, columns.split) if columns.split else None,
                indication=optional_text(cell.get("indication")),
            )
        )
    return SourceTable("csv", records, [str(table), str(images)], {"label_columns": label_columns})
