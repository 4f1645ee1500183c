"""CodaLab submission validation for CXR-LT 2024 tasks 1-3.

A submission is a CSV (optionally the one top-level CSV of a zip): header `dicom_id,<class names>`, one
row per image of the development/test CSV (whose ids must be unique), probabilities in [0, 1]. Every
fault a scorer would choke on, or silently mis-score, is collected with its line and column, rather
than stopping at the first: a team fixing a submission two hours before a deadline wants the whole list.
Cells and names quoted in messages are cut to a readable length (a broken file can hold megabytes in
one cell). Column ORDER is only a warning because the classes are matched by name.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.errors import InputError
from cxrlt.labels import TASK_SCHEMAS
from cxrlt.tables import line_of, read_csv_strings, require_columns, unique_ids

ID_COLUMN = "dicom_id"
_QUOTED = 60  # characters of a cell or name a message quotes


def _cut(text: str) -> str:
    """`text` cut to _QUOTED characters, its full length said."""
    return text if len(text) <= _QUOTED else f"{text[:_QUOTED]}... ({len(text)} characters)"


def _quote(text: str) -> str:
    """repr of `text`, cut to _QUOTED characters, its full length said."""
    return repr(text) if len(text) <= _QUOTED else f"{text[:_QUOTED]!r}... ({len(text)} characters)"


@dataclass(frozen=True)
class Fault:
    kind: str  # header | column | id | value | file
    message: str
    line: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {_quote(self.column)}")
        return f"[{self.kind}] " + (f"{', '.join(where)}: " if where else "") + self.message


@dataclass
class ValidationReport:
    path: str
    task: str
    n_rows: int = 0
    faults: list[Fault] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults


def expected_ids(ids_path: str | os.PathLike) -> list[str]:
    """The dicom_ids a submission must cover, from the challenge's development/test CSV (a blank or
    duplicate id there is an InputError naming its line)."""
    frame = read_csv_strings(ids_path)
    require_columns(frame, [ID_COLUMN], ids_path)
    return unique_ids(frame, ID_COLUMN, ids_path).tolist()


def _read_submission_text(path: Path) -> str:
    if path.suffix.lower() != ".zip":
        return path.read_text(encoding="utf-8-sig")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.lower().endswith(".csv") and not n.startswith("__MACOSX/")]
            if len(members) != 1:
                raise InputError(f"{path}: the zip must hold exactly one .csv, found {members or 'none'}")
            # CodaLab reads one CSV at the zip's top level; one in a folder (or a '../' name) is not read.
            if "/" in members[0] or "\\" in members[0]:
                raise InputError(
                    f"{path}: the .csv must be at the top level of the zip, found {members[0]!r}; zip the file alone"
                )
            return archive.read(members[0]).decode("utf-8-sig")
    except zipfile.BadZipFile as e:
        raise InputError(f"{path}: not a valid zip file: {e}") from None


def validate_submission(path: str | os.PathLike, task: str, ids: Sequence[str]) -> ValidationReport:
    """Check a submission CSV/zip for `task` (t1, t2, t3) against the ids it must cover."""
    if task not in TASK_SCHEMAS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASK_SCHEMAS)}")
    classes = TASK_SCHEMAS[task].classes
    path = Path(path)
    report = ValidationReport(path=str(path), task=task)
    try:
        text = _read_submission_text(path)
    except UnicodeDecodeError as e:
        report.faults.append(Fault("file", f"not UTF-8 text: {e}"))
        return report
    header = next(csv.reader(io.StringIO(text)), None)
    if not header:
        report.faults.append(Fault("file", "the file is empty"))
        return report
    _check_header(header, classes, report)
    if len(set(header)) != len(header):
        return report  # duplicate columns make every later per-column check ambiguous
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.ParserError as e:
        report.faults.append(Fault("file", f"malformed CSV: {e}"))
        return report
    report.n_rows = len(frame)
    if ID_COLUMN in frame.columns:
        _check_ids(frame[ID_COLUMN].to_numpy(), ids, report)
    for name in classes:
        if name in frame.columns:
            _check_values(frame[name], name, report)
    return report


def _check_header(header: list[str], classes: Sequence[str], report: ValidationReport) -> None:
    if header[0] != ID_COLUMN:
        report.faults.append(
            Fault("header", f"the first column must be {ID_COLUMN!r}, found {_quote(header[0])}", line=1)
        )
    seen = set()
    for name in header:
        if name in seen:
            report.faults.append(Fault("header", "duplicate column", line=1, column=name))
        seen.add(name)
    present = [h for h in header if h != ID_COLUMN]
    missing = [c for c in classes if c not in present]
    extra = [h for h in present if h not in classes and h != header[0]]
    for name in missing:
        close = difflib.get_close_matches(name, extra, n=1, cutoff=0.6)
        hint = f"; {_quote(close[0])} looks like a misspelling of it" if close else ""
        report.faults.append(Fault("column", f"missing class column{hint}", line=1, column=name))
    for name in extra:
        report.faults.append(Fault("column", "not a class of this task", line=1, column=name))
    if not missing and not extra and [h for h in present if h in classes] != list(classes):
        report.warnings.append("class columns are not in the task's order (they are matched by name)")


def _check_ids(ids: np.ndarray, expected: Sequence[str], report: ValidationReport) -> None:
    first_line: dict[str, int] = {}
    for row, value in enumerate(ids):
        if value == "":
            report.faults.append(Fault("id", "empty dicom_id", line=line_of(row), column=ID_COLUMN))
        elif value in first_line:
            report.faults.append(
                Fault("id", f"duplicate {_quote(value)} (first on line {first_line[value]})", line=line_of(row))
            )
        else:
            first_line[value] = line_of(row)
    expected_set = set(expected)
    for value in expected:
        if value not in first_line:
            report.faults.append(Fault("id", f"missing row for {_quote(value)}"))
    for value, line in first_line.items():
        if value not in expected_set:
            report.faults.append(Fault("id", f"{_quote(value)} is not in the id list", line=line))


def _check_values(cells: pd.Series, name: str, report: ValidationReport) -> None:
    values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
    for row in np.flatnonzero(np.isnan(values)):
        raw = cells.iloc[row]
        problem = "empty value" if raw.strip() == "" else f"not a probability: {_quote(raw)}"
        report.faults.append(Fault("value", problem, line=line_of(row), column=name))
    for row in np.flatnonzero(np.isfinite(values) & ((values < 0) | (values > 1)) | np.isinf(values)):
        report.faults.append(
            Fault("value", f"{_cut(cells.iloc[row])} is outside [0, 1]", line=line_of(row), column=name)
        )
