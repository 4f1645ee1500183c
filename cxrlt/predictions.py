"""The prediction-file contract: one table per (model, split) plus a sidecar JSON describing it.

Table: `image_id`, `study_id`, then one column per class holding probabilities in [0, 1]. CSV
(`.csv`, readable anywhere) or Parquet (`.parquet`, ~10x faster to load for 80k x 45). Sidecar: the
table's path with `.json` appended, holding

    {classes, schema, split, model, config_hash, checkpoint, mlflow_run_id, tta, created_at, extra}

`classes` is the column order the writer used; readers still match columns by NAME. The trainer's
`predict`, the ensembler's `apply` and the submission writer all go through `write_predictions` /
`read_predictions`, so a file one step writes is a file the next step accepts. Both files are written
atomically, the table first: a sidecar only ever describes a complete table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlt.atomic import atomic_path, write_text_atomic
from cxrlt.errors import InputError
from cxrlt.tables import line_of, parse_scores, read_csv_strings, require_columns, unique_ids

IMAGE_ID = "image_id"
STUDY_ID = "study_id"
SUFFIXES = (".csv", ".parquet")
_SHOWN = 5


@dataclass(frozen=True)
class PredictionMeta:
    """What a prediction table is: its classes and schema, the split, and where it came from."""

    classes: tuple[str, ...]
    schema: str
    split: str
    model: str
    config_hash: str | None = None
    checkpoint: str | None = None
    mlflow_run_id: str | None = None
    tta: str | None = None  # e.g. "none", "hflip"; free text describing test-time augmentation
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        payload = asdict(self)
        payload["classes"] = list(self.classes)
        payload["extra"] = dict(self.extra)
        return json.dumps(payload, indent=2) + "\n"


@dataclass(frozen=True)
class Predictions:
    """A loaded prediction file: ids, an (N, C) float32 probability matrix in `meta.classes` order."""

    image_ids: np.ndarray
    study_ids: np.ndarray
    probs: np.ndarray
    meta: PredictionMeta
    path: Path | None = None


def sidecar_path(table: str | os.PathLike) -> Path:
    table = Path(table)
    return table.with_name(table.name + ".json")


def _table_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: prediction tables end in {' or '.join(SUFFIXES)}, not {suffix!r}")
    return suffix


def write_predictions(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    study_ids: Sequence[str],
    probs: np.ndarray,
    meta: PredictionMeta,
) -> Path:
    """Write the table and its sidecar atomically; `probs` columns are in `meta.classes` order."""
    path = Path(path)
    suffix = _table_format(path)
    probs = np.asarray(probs)
    if probs.shape != (len(image_ids), len(meta.classes)):
        raise ValueError(f"probabilities {probs.shape} do not match {len(image_ids)} ids x {len(meta.classes)} classes")
    if len(study_ids) != len(image_ids):
        raise ValueError(f"{len(study_ids)} study ids for {len(image_ids)} image ids")
    if not np.all((probs >= 0) & (probs <= 1)):
        raise ValueError("probabilities must lie in [0, 1] (NaN is not a probability)")
    frame = pd.DataFrame(probs, columns=list(meta.classes))
    frame.insert(0, STUDY_ID, [str(s) for s in study_ids])
    frame.insert(0, IMAGE_ID, [str(i) for i in image_ids])
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False, float_format="%.6g")
        else:
            frame.to_parquet(tmp, index=False)
    write_text_atomic(sidecar_path(path), meta.to_json())
    return path


def read_meta(path: str | os.PathLike) -> PredictionMeta:
    """The sidecar of table `path`, checked for the required keys."""
    side = sidecar_path(path)
    try:
        payload = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no sidecar {side.name} beside it; prediction files need one") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{side}: invalid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise InputError(f"{side}: expected a JSON object")
    known = set(PredictionMeta.__dataclass_fields__)
    missing = [k for k in ("classes", "schema", "split", "model") if k not in payload]
    unknown = sorted(set(payload) - known)
    if missing:
        raise InputError(f"{side}: missing key(s) {', '.join(missing)}")
    if unknown:
        raise InputError(f"{side}: unknown key(s) {', '.join(unknown)}")
    classes = payload["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputError(f"{side}: 'classes' must be a non-empty list of class names")
    if len(set(classes)) != len(classes):
        raise InputError(f"{side}: 'classes' repeats a name")
    return PredictionMeta(**{**payload, "classes": tuple(classes)})


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Load a table and its sidecar; every fault names the file, line and column."""
    path = Path(path)
    suffix = _table_format(path)
    meta = read_meta(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction table {path} not found")
    if suffix == ".csv":
        frame = read_csv_strings(path)
        require_columns(frame, [IMAGE_ID, STUDY_ID, *meta.classes], path)
        probs = parse_scores(frame, meta.classes, path)
    else:
        frame = pd.read_parquet(path)
        require_columns(frame, [IMAGE_ID, STUDY_ID, *meta.classes], path)
        frame[IMAGE_ID] = frame[IMAGE_ID].astype(str)
        frame[STUDY_ID] = frame[STUDY_ID].astype(str)
        probs = _numeric(frame, meta.classes, path)
    extra = [c for c in frame.columns if c not in (IMAGE_ID, STUDY_ID, *meta.classes)]
    if extra:
        raise InputError(f"{path}: column(s) {extra} are not in the sidecar's classes")
    outside = np.argwhere((probs < 0) | (probs > 1))
    if outside.size:
        row, col = outside[0]
        raise InputError(
            f"{path}: line {line_of(row)}, column {meta.classes[col]!r}: {probs[row, col]} is not in [0, 1]"
        )
    image_ids = unique_ids(frame, IMAGE_ID, path)
    blank_study = np.flatnonzero(frame[STUDY_ID].to_numpy() == "")
    if blank_study.size:
        raise InputError(f"{path}: empty {STUDY_ID} on line(s) {[line_of(r) for r in blank_study[:_SHOWN]]}")
    return Predictions(
        image_ids=np.asarray(image_ids, dtype=object),
        study_ids=frame[STUDY_ID].to_numpy(dtype=object),
        probs=probs.astype(np.float32),
        meta=meta,
        path=path,
    )


def _numeric(frame: pd.DataFrame, classes: Sequence[str], path: Path) -> np.ndarray:
    out = np.empty((len(frame), len(classes)), dtype=np.float64)
    for j, name in enumerate(classes):
        try:
            values = frame[name].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path}: column {name!r} is not numeric") from None
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(f"{path}: column {name!r}: not a finite number on line {line_of(bad[0])}")
        out[:, j] = values
    return out
