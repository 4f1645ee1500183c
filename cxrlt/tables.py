"""Reading label and score tables (CSV) by column NAME, with errors that point at the line and column.

CXR-LT files disagree on column order (the Task 2 development file is alphabetical, the submission
order is not), so nothing here reads a column by position. Line numbers in messages are the file's own:
the header is line 1, the first data row line 2.

Label cells: 1 / 0 positive / negative, -1 or blank unknown (also 1.0 / 0.0 / -1.0, as pandas writes
them). Anything else is an error: a silently coerced label is a wrong label.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrlt.errors import InputError
from cxrlt.labels import UNKNOWN

ID_COLUMNS = ("dicom_id", "image_id")
_LABEL_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": -1.0}
_SHOWN = 5  # offending ids/lines listed in an error before "... and N more"


def line_of(row: int | np.integer) -> int:
    """File line of data row `row` (0-based, a numpy index is fine): the header is line 1."""
    return int(row) + 2


def read_csv_strings(path: str | os.PathLike) -> pd.DataFrame:
    """Every cell as the string written in the file (blank stays ''), so validation sees the raw text."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as CSV: {e}") from None


def _listing(items: Sequence, total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(str(i) for i in items[:_SHOWN])
    return shown + (f" ... and {total - _SHOWN} more" if total > _SHOWN else "")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], path: str | os.PathLike) -> None:
    """Error naming every missing column, with the closest present name as a hint."""
    present = list(frame.columns)
    missing = [c for c in columns if c not in present]
    if not missing:
        return
    parts = []
    for name in missing:
        close = difflib.get_close_matches(name, present, n=1, cutoff=0.75)
        parts.append(f"{name!r}" + (f" (found {close[0]!r})" if close else ""))
    raise InputError(f"{path}: missing column(s) {', '.join(parts)}")


def resolve_id_column(requested: str | None, *tables: tuple[pd.DataFrame, str | os.PathLike]) -> str:
    """The id column to join on: `requested`, else the first of ID_COLUMNS present in every table."""
    if requested is not None:
        for frame, path in tables:
            require_columns(frame, [requested], path)
        return requested
    for candidate in ID_COLUMNS:
        if all(candidate in frame.columns for frame, _ in tables):
            return candidate
    paths = ", ".join(str(p) for _, p in tables)
    raise InputError(f"no shared id column ({' or '.join(ID_COLUMNS)}) in {paths}; pass --id-column")


def unique_ids(frame: pd.DataFrame, id_column: str, path: str | os.PathLike) -> np.ndarray:
    ids = frame[id_column].to_numpy()
    blank = np.flatnonzero(ids == "")
    if blank.size:
        raise InputError(f"{path}: empty {id_column} on line(s) {_listing([line_of(r) for r in blank])}")
    duplicated = frame[id_column].duplicated(keep=False).to_numpy()
    if duplicated.any():
        rows = np.flatnonzero(duplicated)
        shown = [f"{ids[r]} (line {line_of(r)})" for r in rows]
        raise InputError(f"{path}: duplicate {id_column}: {_listing(shown)}")
    return ids


def parse_labels(
    frame: pd.DataFrame,
    classes: Sequence[str],
    path: str | os.PathLike,
    uncertain: float = UNKNOWN,
    blank: float = UNKNOWN,
) -> np.ndarray:
    """(N, C) float32 labels; any cell other than 1 / 0 / -1 / blank is an error naming line and column.

    `uncertain` is what a -1 cell becomes and `blank` what an empty (or NaN) cell becomes: unknown by
    default, or a CheXpert-style policy value (1.0 / 0.0) chosen by the caller.
    """
    require_columns(frame, classes, path)
    out = np.empty((len(frame), len(classes)), dtype=np.float32)
    for j, name in enumerate(classes):
        cells = frame[name].fillna("").astype(str).str.strip()
        mapped = cells.map(_LABEL_VALUES)
        bad = np.flatnonzero(mapped.isna().to_numpy())
        if bad.size:
            shown = [f"line {line_of(r)} = {cells.iloc[r]!r}" for r in bad]
            raise InputError(f"{path}: column {name!r}: label values must be 1, 0, -1 or blank; got {_listing(shown)}")
        values = mapped.to_numpy(dtype=np.float32)
        out[:, j] = np.where(cells.to_numpy() == "", blank, np.where(values == -1, uncertain, values))
    return out


def parse_scores(frame: pd.DataFrame, classes: Sequence[str], path: str | os.PathLike) -> np.ndarray:
    """(N, C) float64 scores; a blank, non-numeric or non-finite cell is an error naming line and column."""
    require_columns(frame, classes, path)
    out = np.empty((len(frame), len(classes)), dtype=np.float64)
    for j, name in enumerate(classes):
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            shown = [f"line {line_of(r)} = {frame[name].iloc[r]!r}" for r in bad]
            raise InputError(f"{path}: column {name!r}: not a finite number: {_listing(shown)}")
        out[:, j] = values
    return out


@dataclass(frozen=True)
class AlignedTables:
    ids: np.ndarray
    labels: np.ndarray  # (N, C) in {1, 0, -1}
    scores: np.ndarray  # (N, C)
    id_column: str  # the label file's
    ignored_prediction_ids: int  # predictions for ids the label file does not have
    prediction_id_column: str  # the prediction file's (image_id against a label file's dicom_id)


def align_predictions(
    predictions_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    classes: Sequence[str],
    id_column: str | None = None,
) -> AlignedTables:
    """Join a score table and a label table on their id column, classes matched by name.

    Without `id_column`, a column both files have is preferred; else each file's own (a prediction
    file's `image_id` holds the same ids as a label file's `dicom_id`). Every labelled id must have a
    prediction (a missing one is an error listing them); predictions for ids without labels are ignored
    and counted. Scores of labelled ids must be probabilities in [0, 1].
    """
    predictions = read_csv_strings(predictions_path)
    labels = read_csv_strings(labels_path)
    try:
        id_column = prediction_column = resolve_id_column(
            id_column, (predictions, predictions_path), (labels, labels_path)
        )
    except InputError:
        if id_column is not None:
            raise
        prediction_column = resolve_id_column(None, (predictions, predictions_path))
        id_column = resolve_id_column(None, (labels, labels_path))
    label_ids = unique_ids(labels, id_column, labels_path)
    prediction_ids = unique_ids(predictions, prediction_column, predictions_path)
    position = pd.Index(prediction_ids).get_indexer(label_ids)
    missing = label_ids[position < 0]
    if missing.size:
        raise InputError(
            f"{predictions_path}: no prediction for {missing.size} of {label_ids.size} labelled ids "
            f"in {labels_path}: {_listing(list(missing))}"
        )
    scores = parse_scores(predictions, classes, predictions_path)[position]
    outside = np.argwhere((scores < 0) | (scores > 1))
    if outside.size:
        shown = [f"line {line_of(position[r])}, class {classes[c]!r} = {scores[r, c]:g}" for r, c in outside]
        raise InputError(f"{predictions_path}: scores must be probabilities in [0, 1]; got {_listing(shown)}")
    return AlignedTables(
        ids=label_ids,
        labels=parse_labels(labels, classes, labels_path),
        scores=scores,
        id_column=id_column,
        ignored_prediction_ids=int(prediction_ids.size - label_ids.size),
        prediction_id_column=prediction_column,
    )


def class_counts(path: str | os.PathLike, classes: Sequence[str]) -> tuple[dict[str, int], int]:
    """Positive count per class and the number of rows of a (training) label table."""
    labels = parse_labels(read_csv_strings(path), classes, path)
    return {c: int((labels[:, j] == 1).sum()) for j, c in enumerate(classes)}, int(labels.shape[0])
