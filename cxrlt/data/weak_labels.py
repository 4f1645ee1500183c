"""Weak-label tables: labels of classes the shards lack, mined from each study's report, by sample id.

A MIMIC user holds the report of every training study; keyword rules (cxrlt.data.mining) read it into
a label per class, and every image of the study gets that label. The table is what the trainer overlays
on a member's targets (`data.weak_labels`, trainers.pseudo), turning zero-shot classes into trained ones
(team G's few-shot reading of CXR-LT 2024 Task 3). CSV, one row per image of the mined split(s):

    dicom_id, study_id, split, <class>...

dicom_id is the image-level shards' sample id and study_id the study-level shards', so one table
serves both levels; split is the shard split the row was read from, so training counts its positives
without reading the shards. Class cells: 1 positive, 0 negative, -1 uncertain (only hedged mentions),
blank when the study has no report text in the rules' sections (no report file, or no FINDINGS /
IMPRESSION): both of the last two are unknown to the trainer. The classes are the header's columns
after `split`.

Reports come from a MIMIC-CXR report tree (`files/pNN/pSUBJECT/sSTUDY.txt`, found from each sample's
patient and study ids) or, without one, from the FINDINGS / IMPRESSION text the shards carry.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlt.atomic import atomic_path
from cxrlt.data.mimic_reports import read_report_sections, study_report_path
from cxrlt.data.mining import MiningConfig, classify
from cxrlt.data.partition import slot_for
from cxrlt.data.readers import ShardSplit
from cxrlt.data.reports import Report
from cxrlt.errors import InputError
from cxrlt.tables import parse_labels, read_csv_strings, require_columns, unique_ids

ID_COLUMNS = ("dicom_id", "study_id", "split")
_SHARD_SECTIONS = {"FINDINGS": "findings", "IMPRESSION": "impression"}


@dataclass(frozen=True)
class WeakLabelTable:
    """Rows of images: ids, their split, and (N, C) float32 labels (1 / 0, -1 unknown) of `classes`."""

    image_ids: tuple[str, ...]
    study_ids: tuple[str, ...]
    splits: tuple[str, ...]
    classes: tuple[str, ...]
    labels: np.ndarray
    uncertain: np.ndarray  # (N, C) bool: unknown because every mention was hedged (-1 in the file)

    def keyed(self, level: str) -> tuple[list[str], list[str], np.ndarray]:
        """(sample ids, their splits, label rows) for shards of `level`: one row per image at image
        level, per study at study level (a study's images share its report's labels)."""
        if level == "image":
            return list(self.image_ids), list(self.splits), self.labels
        first = {study: row for row, study in reversed(list(enumerate(self.study_ids)))}
        rows = sorted(first.values())
        return [self.study_ids[r] for r in rows], [self.splits[r] for r in rows], self.labels[rows]


def study_labels(report: Report, cfg: MiningConfig) -> list[int] | None:
    """The report's label per rule (mining.POSITIVE / NEGATIVE / UNCERTAIN), or None when it has no text
    in the rules' sections (nothing to read a finding's absence from)."""
    if not any(report.sections.get(section.upper()) for section in cfg.sections):
        return None
    return [classify(report, rule, cfg).label for rule in cfg.rules.values()]


def _split_metas(shards: str | os.PathLike, split: str) -> list[dict]:
    """The json metadata of every sample of `split`, in split order; image members are left unread."""
    data = ShardSplit(Path(shards), split)
    everything = slot_for(len(data.entries), 0, 1, 0, 1)
    return [meta for s in range(len(data.entries)) for _, meta, _ in data.read(s, everything, skipping=lambda: True)]


def _report(meta: dict, reports: Path | None) -> Report:
    study = str(meta["study_id"])
    if reports is not None:
        return Report(study, read_report_sections(study_report_path(reports, meta["patient_id"], study)))
    return Report(study, {name: meta[key] for name, key in _SHARD_SECTIONS.items() if meta.get(key)})


def mine_split(
    shards: str | os.PathLike, splits: Sequence[str], cfg: MiningConfig, reports: str | os.PathLike | None = None
) -> WeakLabelTable:
    """Weak labels of the rules' classes for every image of `splits` of a shard set (either level)."""
    if not cfg.rules:
        raise InputError("mining config has no [rules.<class>] table")
    root = Path(reports) if reports is not None else None
    if root is not None and not root.is_dir():
        raise InputError(f"--reports {root}: no such folder (expected the MIMIC-CXR files/pNN/... tree)")
    image_ids: list[str] = []
    study_ids: list[str] = []
    split_names: list[str] = []
    rows: list[list[float]] = []
    for split in splits:
        for meta in _split_metas(shards, split):
            labels = study_labels(_report(meta, root), cfg)
            row = [float(v) for v in labels] if labels is not None else [np.nan] * len(cfg.rules)
            images = meta["image_ids"] if "image_ids" in meta else [meta["image_id"]]
            for image in images:
                image_ids.append(str(image))
                study_ids.append(str(meta["study_id"]))
                split_names.append(split)
                rows.append(row)
    values = np.array(rows, dtype=np.float32).reshape(len(rows), len(cfg.rules))
    return WeakLabelTable(
        tuple(image_ids),
        tuple(study_ids),
        tuple(split_names),
        tuple(cfg.rules),
        np.nan_to_num(values, nan=-1.0),
        values == -1,
    )


def write_weak_labels(table: WeakLabelTable, path: str | os.PathLike) -> Path:
    """The table as CSV (module docstring), atomically: -1 for uncertain, blank for no report text."""

    def cell(value: float, uncertain: bool) -> str:
        return "-1" if uncertain else "" if value < 0 else str(int(value))

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*ID_COLUMNS, *table.classes])
        for i in range(len(table.image_ids)):
            cells = [cell(v, u) for v, u in zip(table.labels[i].tolist(), table.uncertain[i].tolist())]
            writer.writerow([table.image_ids[i], table.study_ids[i], table.splits[i], *cells])
    return Path(path)


def read_weak_labels(path: str | os.PathLike) -> WeakLabelTable:
    """A weak-label CSV; a missing column, a bad cell or a repeated dicom_id is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weak labels {path}: no such file")
    frame = read_csv_strings(path)
    require_columns(frame, ID_COLUMNS, path)
    classes = tuple(c for c in frame.columns if c not in ID_COLUMNS)
    if not classes:
        raise InputError(f"{path}: no class columns after {', '.join(ID_COLUMNS)}")
    if frame.empty:
        raise InputError(f"{path}: no rows")
    image_ids = unique_ids(frame, "dicom_id", path)
    blank = [str(i + 2) for i in np.flatnonzero((frame["study_id"] == "") | (frame["split"] == ""))]
    if blank:
        raise InputError(f"{path}: empty study_id or split on line(s) {', '.join(blank[:5])}")
    labels = parse_labels(frame, classes, path)
    uncertain = np.stack([frame[c].str.strip().isin(["-1", "-1.0"]).to_numpy() for c in classes], axis=1)
    return WeakLabelTable(
        tuple(image_ids.tolist()),
        tuple(frame["study_id"]),
        tuple(frame["split"]),
        classes,
        labels,
        uncertain,
    )
