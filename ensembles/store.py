"""The prediction store: many members' prediction files aligned into one (M, N, C) array.

Rows are aligned by image id and columns by class NAME, so members written in different orders
combine correctly. Anything that would make the stack mean different things in different members is
refused with the files named: different schemas or splits, different class sets, different image ids,
an image placed in different studies, the same model twice. Labels, patient ids and view positions
come from the challenge's own CSVs and are aligned to the same rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrlt.errors import InputError
from cxrlt.predictions import PredictionMeta, Predictions, read_predictions
from cxrlt.tables import parse_labels, read_csv_strings, require_columns, resolve_id_column, unique_ids

_SHOWN = 5


@dataclass(frozen=True)
class Member:
    path: Path
    meta: PredictionMeta

    @property
    def name(self) -> str:
        return self.meta.model


@dataclass(frozen=True)
class MemberStack:
    members: tuple[Member, ...]
    classes: tuple[str, ...]
    schema: str
    split: str
    image_ids: np.ndarray
    study_ids: np.ndarray
    probs: np.ndarray  # (M, N, C) float32, members x images x classes

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


def _listing(items: Iterable) -> str:
    items = list(items)
    return ", ".join(map(str, items[:_SHOWN])) + (f" ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _same(values: dict[Path, str], what: str) -> str:
    distinct = sorted(set(values.values()))
    if len(distinct) > 1:
        by_value = {v: [str(p) for p, x in values.items() if x == v] for v in distinct}
        detail = "; ".join(f"{v!r}: {_listing(paths)}" for v, paths in by_value.items())
        raise InputError(f"members disagree on {what}: {detail}")
    return distinct[0]


def _source(p: Predictions) -> Path:
    """The file `p` was read from; read_predictions always records it."""
    if p.path is None:
        raise ValueError(f"predictions of model {p.meta.model!r} carry no source path")
    return p.path


def load_members(paths: Sequence[str | os.PathLike], classes: Sequence[str] | None = None) -> MemberStack:
    """Load and align prediction files; `classes` (e.g. from a recipe) selects and orders the columns.

    Without `classes`, every member must have the first member's class set, and its order is used.
    """
    if not paths:
        raise InputError("no prediction files given")
    loaded = [read_predictions(p) for p in tqdm(paths, desc="loading members", unit="file", leave=False)]
    schema = _same({_source(p): p.meta.schema for p in loaded}, "schema")
    split = _same({_source(p): p.meta.split for p in loaded}, "split")
    seen: dict[str, Path] = {}
    for p in loaded:
        if p.meta.model in seen:
            raise InputError(f"{p.path}: model {p.meta.model!r} is also in {seen[p.meta.model]}; one file per model")
        seen[p.meta.model] = _source(p)
    first = loaded[0]
    wanted = tuple(classes) if classes is not None else first.meta.classes
    for p in loaded:
        missing = [c for c in wanted if c not in p.meta.classes]
        extra = [] if classes is not None else [c for c in p.meta.classes if c not in wanted]
        if missing or extra:
            raise InputError(
                f"{p.path}: classes differ from {'the recipe' if classes is not None else first.path}: "
                f"missing {missing}, extra {extra}"
            )
    order = pd.Index(first.image_ids)
    probs = np.empty((len(loaded), order.size, len(wanted)), dtype=np.float32)
    for m, p in enumerate(loaded):
        rows = order.get_indexer(p.image_ids)
        if p.image_ids.size != order.size or (rows < 0).any():
            missing_ids = np.setdiff1d(first.image_ids.astype(str), p.image_ids.astype(str))
            extra_ids = p.image_ids[rows < 0]
            raise InputError(
                f"{p.path}: image ids differ from {first.path}: {missing_ids.size} missing ({_listing(missing_ids)}), "
                f"{extra_ids.size} extra ({_listing(extra_ids)})"
            )
        moved = np.empty_like(p.study_ids)
        moved[rows] = p.study_ids
        wrong_study = np.flatnonzero(moved != first.study_ids)
        if wrong_study.size:
            i = wrong_study[0]
            raise InputError(
                f"{p.path}: image {first.image_ids[i]} is in study {moved[i]} here but {first.study_ids[i]} "
                f"in {first.path} ({wrong_study.size} images disagree)"
            )
        columns = [p.meta.classes.index(c) for c in wanted]
        probs[m, rows] = p.probs[:, columns]
    return MemberStack(
        members=tuple(Member(_source(p), p.meta) for p in loaded),
        classes=wanted,
        schema=schema,
        split=split,
        image_ids=first.image_ids,
        study_ids=first.study_ids,
        probs=probs,
    )


@dataclass(frozen=True)
class LabelTable:
    labels: np.ndarray  # (N, C) in {1, 0, -1}, rows in the stack's image order
    patient_ids: np.ndarray


def _rows_for(frame: pd.DataFrame, path: str | os.PathLike, image_ids: np.ndarray, id_column: str | None) -> np.ndarray:
    column = resolve_id_column(id_column, (frame, path))
    ids = unique_ids(frame, column, path)
    rows = pd.Index(ids).get_indexer(image_ids.astype(str))
    if (rows < 0).any():
        missing = image_ids[rows < 0]
        raise InputError(f"{path}: no row for {missing.size} of {image_ids.size} predicted images: {_listing(missing)}")
    return rows


def load_labels(
    path: str | os.PathLike,
    image_ids: np.ndarray,
    classes: Sequence[str],
    patient_column: str = "subject_id",
    id_column: str | None = None,
) -> LabelTable:
    """Labels and patient ids for `image_ids` from a label CSV (dicom_id/image_id, patient column, classes)."""
    frame = read_csv_strings(path)
    require_columns(frame, [patient_column, *classes], path)
    rows = _rows_for(frame, path, image_ids, id_column)
    patients = frame[patient_column].to_numpy()[rows]
    blank = np.flatnonzero(patients == "")
    if blank.size:
        raise InputError(f"{path}: column {patient_column!r} is empty for image {image_ids[blank[0]]}")
    return LabelTable(labels=parse_labels(frame, classes, path)[rows], patient_ids=patients)


def load_views(
    path: str | os.PathLike, image_ids: np.ndarray, view_column: str = "ViewPosition", id_column: str | None = None
) -> np.ndarray:
    """The view position of each image (blank where the CSV has none), from e.g. the CXR-LT test CSV."""
    frame = read_csv_strings(path)
    require_columns(frame, [view_column], path)
    rows = _rows_for(frame, path, image_ids, id_column)
    return frame[view_column].str.strip().str.upper().to_numpy()[rows]
