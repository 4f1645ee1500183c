"""CodaLab submission validation for CXR-LT 2024 tasks 1-3.

A submission is a CSV (optionally the one top-level CSV of a zip): header `dicom_id,<class names>`, one
row per image of the development/test CSV (whose ids must be unique), probabilities in [0, 1]. Every
fault a scorer would choke on, or silently mis-score, is collected with its line and column, rather
than stopping at the first: a team fixing a submission two hours before a deadline wants the whole list.
Cells and names quoted in messages are cut to a readable length (a broken file can hold megabytes in
one cell). Column ORDER is only a warning because the classes are matched by name.

Memory stays bounded whatever the file holds: the CSV (or the zip's CSV, by its declared size, which
reading also enforces) may be at most MAX_CSV_BYTES uncompressed, a real submission being ~40k rows x
46 columns, a few MB; the header line at most MAX_HEADER_BYTES; the rows are streamed in chunks of
CHUNK_ROWS; only the expected ids are remembered (for duplicates and missing rows); and past
FAULTS_KEPT_PER_KIND faults of one kind the rest are only counted.
"""

from __future__ import annotations

import csv
import difflib
import os
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from cxrlt.errors import InputError
from cxrlt.labels import TASK_SCHEMAS
from cxrlt.tables import read_csv_strings, require_columns, unique_ids

ID_COLUMN = "dicom_id"
_QUOTED = 60  # characters of a cell or name a message quotes
MAX_CSV_BYTES = 256 * 2**20
# Room for the id and class names many times over, and under csv's 128 KiB field limit, so a header
# field can never reach it.
MAX_HEADER_BYTES = 64 * 2**10
CHUNK_ROWS = 8192
FAULTS_KEPT_PER_KIND = 1000


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
    # Faults per kind, including those past FAULTS_KEPT_PER_KIND that are counted but not kept.
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.faults

    def add(self, fault: Fault) -> None:
        self.counts[fault.kind] += 1
        if self.counts[fault.kind] <= FAULTS_KEPT_PER_KIND:
            self.faults.append(fault)


def expected_ids(ids_path: str | os.PathLike) -> list[str]:
    """The dicom_ids a submission must cover, from the challenge's development/test CSV (a blank or
    duplicate id there is an InputError naming its line)."""
    frame = read_csv_strings(ids_path)
    require_columns(frame, [ID_COLUMN], ids_path)
    return unique_ids(frame, ID_COLUMN, ids_path).tolist()


def _check_size(size: int, what: str) -> None:
    if size > MAX_CSV_BYTES:
        raise InputError(
            f"{what} is {size / 2**20:.0f} MiB uncompressed; a submission CSV may be at most "
            f"{MAX_CSV_BYTES // 2**20} MiB (CXR-LT's test set makes a few MB)"
        )


@contextmanager
def _open_csv(path: Path) -> Iterator[IO[bytes]]:
    """The submission CSV as a seekable byte stream: the file itself, or the one top-level CSV of a zip,
    decompressed as it is read. A zip found damaged while reading (a CRC mismatch) is an InputError."""
    if path.suffix.lower() != ".zip":
        _check_size(path.stat().st_size, str(path))
        with path.open("rb") as stream:
            yield stream
        return
    try:
        with zipfile.ZipFile(path) as archive:
            members = [
                m
                for m in archive.infolist()
                if m.filename.lower().endswith(".csv") and not m.filename.startswith("__MACOSX/")
            ]
            if len(members) != 1:
                found = [m.filename for m in members] or "none"
                raise InputError(f"{path}: the zip must hold exactly one .csv, found {found}")
            member, name = members[0], members[0].filename
            # CodaLab reads one CSV at the zip's top level; one in a folder (or a '../' name) is not read.
            if "/" in name or "\\" in name:
                raise InputError(
                    f"{path}: the .csv must be at the top level of the zip, found {name!r}; zip the file alone"
                )
            # The declared size is also a ceiling: zipfile stops decompressing there (and then fails the CRC).
            _check_size(member.file_size, f"{path}: {name}")
            with archive.open(member) as stream:
                yield stream
    except zipfile.BadZipFile as e:
        raise InputError(f"{path}: not a valid zip file: {e}") from None


def validate_submission(path: str | os.PathLike, task: str, ids: Sequence[str]) -> ValidationReport:
    """Check a submission CSV/zip for `task` (t1, t2, t3) against the ids it must cover."""
    if task not in TASK_SCHEMAS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASK_SCHEMAS)}")
    classes = TASK_SCHEMAS[task].classes
    path = Path(path)
    report = ValidationReport(path=str(path), task=task)
    with _open_csv(path) as stream:
        try:
            header = _read_header(stream, report)
            if header is None:
                return report
            _check_header(header, classes, report)
            if len(set(header)) != len(header):
                return report  # duplicate columns make every later per-column check ambiguous
            stream.seek(0)
            _check_rows(stream, header, classes, ids, report)
        except UnicodeDecodeError as e:
            report.add(Fault("file", f"not UTF-8 text: {e}"))
    return report


def _read_header(stream: IO[bytes], report: ValidationReport) -> list[str] | None:
    """The header's fields, read from at most MAX_HEADER_BYTES; None (with a fault) if there is none."""
    line = stream.readline(MAX_HEADER_BYTES)
    if len(line) == MAX_HEADER_BYTES and not line.endswith(b"\n"):
        report.add(
            Fault(
                "header",
                f"longer than {MAX_HEADER_BYTES // 1024} KiB; it holds only {ID_COLUMN!r} and the class names",
                line=1,
            )
        )
        return None
    try:
        header = next(csv.reader([line.decode("utf-8-sig")]), None)
    except csv.Error as e:
        report.add(Fault("header", f"malformed CSV: {e}", line=1))
        return None
    if not header:
        report.add(Fault("file", "the file is empty"))
        return None
    return header


def _check_rows(
    stream: IO[bytes], header: list[str], classes: Sequence[str], ids: Sequence[str], report: ValidationReport
) -> None:
    """Check the rows after the header, CHUNK_ROWS at a time, by their position in `header`."""
    position = {name: i for i, name in enumerate(header)}
    expected = set(ids)
    first_line: dict[str, int] = {}
    chunks = pd.read_csv(
        stream,
        header=None,
        names=list(range(len(header))),
        skiprows=1,
        encoding="utf-8-sig",
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        chunksize=CHUNK_ROWS,
    )
    try:
        for chunk in chunks:
            report.n_rows += len(chunk)
            lines = chunk.index.to_numpy() + 2  # the header is line 1
            if ID_COLUMN in position:
                _check_ids(chunk[position[ID_COLUMN]].to_numpy(), lines, expected, first_line, report)
            for name in classes:
                if name in position:
                    _check_values(chunk[position[name]], lines, name, report)
    except pd.errors.ParserError as e:
        report.add(Fault("file", f"malformed CSV: {e}"))
        return
    if ID_COLUMN in position:
        for value in ids:
            if value not in first_line:
                report.add(Fault("id", f"missing row for {_quote(value)}"))


def _check_header(header: list[str], classes: Sequence[str], report: ValidationReport) -> None:
    if header[0] != ID_COLUMN:
        report.add(Fault("header", f"the first column must be {ID_COLUMN!r}, found {_quote(header[0])}", line=1))
    seen = set()
    for name in header:
        if name in seen:
            report.add(Fault("header", "duplicate column", line=1, column=name))
        seen.add(name)
    present = [h for h in header if h != ID_COLUMN]
    missing = [c for c in classes if c not in present]
    extra = [h for h in present if h not in classes and h != header[0]]
    for name in missing:
        close = difflib.get_close_matches(name, extra, n=1, cutoff=0.6)
        hint = f"; {_quote(close[0])} looks like a misspelling of it" if close else ""
        report.add(Fault("column", f"missing class column{hint}", line=1, column=name))
    for name in extra:
        report.add(Fault("column", "not a class of this task", line=1, column=name))
    if not missing and not extra and [h for h in present if h in classes] != list(classes):
        report.warnings.append("class columns are not in the task's order (they are matched by name)")


def _check_ids(
    values: np.ndarray, lines: np.ndarray, expected: set[str], first_line: dict[str, int], report: ValidationReport
) -> None:
    """`first_line`: where each expected id was first seen, carried across chunks. Only expected ids are
    remembered, so an unexpected one is reported on every line it appears."""
    for value, line in zip(values, lines.tolist()):
        if value == "":
            report.add(Fault("id", "empty dicom_id", line=line, column=ID_COLUMN))
        elif value not in expected:
            report.add(Fault("id", f"{_quote(value)} is not in the id list", line=line))
        elif value in first_line:
            report.add(Fault("id", f"duplicate {_quote(value)} (first on line {first_line[value]})", line=line))
        else:
            first_line[value] = line


def _check_values(cells: pd.Series, lines: np.ndarray, name: str, report: ValidationReport) -> None:
    values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
    for row in np.flatnonzero(np.isnan(values)):
        raw = cells.iloc[row]
        problem = "empty value" if raw.strip() == "" else f"not a probability: {_quote(raw)}"
        report.add(Fault("value", problem, line=int(lines[row]), column=name))
    for row in np.flatnonzero(np.isfinite(values) & ((values < 0) | (values > 1)) | np.isinf(values)):
        report.add(Fault("value", f"{_cut(cells.iloc[row])} is outside [0, 1]", line=int(lines[row]), column=name))
