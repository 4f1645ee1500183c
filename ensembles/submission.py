"""CodaLab submission files from an applied ensemble's prediction file.

Rows follow the challenge's id CSV (dicom_id = the prediction file's image_id); class columns are the
task's, in the task's order, picked by name; several prediction files are averaged class by class. The
zip is built in a temporary file, checked with the foundation's validator, and only renamed into place
when it has no faults.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.atomic import atomic_path
from cxrlt.errors import InputError
from cxrlt.labels import TASK_SCHEMAS
from cxrlt.predictions import read_predictions
from cxrlt.submission import ID_COLUMN, ValidationReport, expected_ids, validate_submission

_SHOWN = 5


def task_scores(
    prediction_paths: Sequence[str | os.PathLike], task: str, ids_path: str | os.PathLike
) -> tuple[list[str], np.ndarray]:
    """(ids of the id CSV, (N, task classes) scores) from one prediction file, or the per-class mean of
    several (e.g. the zero-shot members that score the Task 3 classes), each holding every id and class."""
    classes = TASK_SCHEMAS[task].classes
    ids = expected_ids(ids_path)
    total = np.zeros((len(ids), len(classes)), dtype=np.float64)
    for path in prediction_paths:
        predictions = read_predictions(path)
        missing = [c for c in classes if c not in predictions.meta.classes]
        if missing:
            raise InputError(f"{path}: no column for task {task} class(es) {missing}")
        rows = pd.Index(predictions.image_ids).get_indexer(ids)
        if (rows < 0).any():
            absent = [i for i, r in zip(ids, rows) if r < 0]
            shown = ", ".join(absent[:_SHOWN]) + (
                f" ... and {len(absent) - _SHOWN} more" if len(absent) > _SHOWN else ""
            )
            raise InputError(f"{path}: no prediction for {len(absent)} id(s) of {ids_path}: {shown}")
        columns = [predictions.meta.classes.index(c) for c in classes]
        total += predictions.probs[np.ix_(rows, columns)]
    return ids, total / len(prediction_paths)


def write_submission(
    predictions_paths: str | os.PathLike | Sequence[str | os.PathLike],
    task: str,
    ids_path: str | os.PathLike,
    out: str | os.PathLike,
) -> ValidationReport:
    """Write `out` (.zip holding submission.csv, or a bare .csv) from one prediction file or the mean of
    several, and return its validation report."""
    if task not in TASK_SCHEMAS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASK_SCHEMAS)}")
    out = Path(out)
    if out.suffix.lower() not in (".zip", ".csv"):
        raise InputError(f"{out}: the submission must be a .zip or .csv")
    paths = [predictions_paths] if isinstance(predictions_paths, (str, os.PathLike)) else list(predictions_paths)
    if not paths:
        raise InputError("no prediction file given")
    ids, scores = task_scores(paths, task, ids_path)
    frame = pd.DataFrame(scores, columns=list(TASK_SCHEMAS[task].classes))
    frame.insert(0, ID_COLUMN, ids)
    text = frame.to_csv(index=False, float_format="%.6f")
    if out.suffix.lower() == ".zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("submission.csv", text)
        data = buffer.getvalue()
    else:
        data = text.encode("utf-8")
    with atomic_path(out) as tmp:
        # The validator tells a zip from a CSV by its suffix, so check a copy that has the final name.
        with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
            candidate = Path(scratch) / out.name
            candidate.write_bytes(data)
            report = validate_submission(candidate, task, ids)
        if not report.ok:
            faults = "; ".join(map(str, report.faults[:_SHOWN]))
            raise InputError(f"{out}: the written submission fails validation ({len(report.faults)} faults): {faults}")
        tmp.write_bytes(data)
    report.path = str(out)
    return report
