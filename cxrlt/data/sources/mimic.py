"""MIMIC-CXR-JPG + CXR-LT 2023/2024 label CSVs, with optional metadata, reports and MIMIC-IV-ED vitals.

Each label CSV (train_labeled.csv, development_labeled_task1.csv, development_task3.csv, ...) is one
split. Columns: dicom_id, subject_id, study_id ("s" + digits), ViewPosition,
ViewCodeSequence_CodeMeaning, fpath (files/pXX/pSUBJECT/sSTUDY/DICOM.jpg relative to the MIMIC-CXR-JPG
root), then one column per class, matched to the target schema by name ("No Finding" of 2023 is
"Normal"). A file without class columns (the unlabelled development/test files) gives unknown labels.
The MIMIC-CXR metadata CSV, when given, fills missing view positions and supplies study times for the
ED join. The reports folder, when given (the MIMIC-CXR 2.0.0 root or its files/), gives each study its
INDICATION (clinical context) and its FINDINGS and IMPRESSION text (cxrlt.data.mimic_reports; the
contrastive stage's text side), read once per study.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.data.mimic_reports import report_sections, study_report_path
from cxrlt.data.records import (
    Record,
    SourceTable,
    parse_label_columns,
    read_table,
    to_target,
)
from cxrlt.data.shardset import SPLITS, normalise_view
from cxrlt.data.sources.mimic_context import extract_indication, join_vitals, study_times
from cxrlt.errors import InputError
from cxrlt.labels import UNKNOWN, Schema, canonical_name
from cxrlt.tables import require_columns

ID_COLUMNS = ("dicom_id", "subject_id", "study_id", "fpath")
META_COLUMNS = (*ID_COLUMNS, "ViewPosition", "ViewCodeSequence_CodeMeaning")
METADATA_COLUMNS = ("dicom_id", "ViewPosition", "StudyDate", "StudyTime")
# 2023 and 2024 files share a spelling except "No Finding" (2023) for "Normal" (2024).
NAMING = "cxr-lt-2023"


def split_of(path: str | Path) -> str:
    """train_labeled.csv -> train, development_*.csv -> dev, test_*.csv -> test."""
    name = Path(path).name.lower()
    for prefix, split in (("train", "train"), ("dev", "dev"), ("val", "dev"), ("test", "test")):
        if name.startswith(prefix):
            return split
    raise InputError(f"{path}: cannot tell its split from the name; pass it as SPLIT=PATH with SPLIT in {SPLITS}")


def _read_labels(path: Path, target: Schema) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    frame = read_table(path)
    require_columns(frame, ID_COLUMNS, path)
    class_columns = [c for c in frame.columns if c not in META_COLUMNS and not c.startswith("Unnamed")]
    if not class_columns:
        return frame, np.full((len(frame), len(target)), UNKNOWN, dtype=np.float32), []
    labels = to_target(parse_label_columns(frame, class_columns, path), class_columns, NAMING, target, str(path))
    wanted = {canonical_name(c, target.naming) for c in target.classes}
    return frame, labels, [c for c in class_columns if canonical_name(c, NAMING) not in wanted]


@dataclass(frozen=True)
class _StudyText:
    indication: str | None = None
    findings: str | None = None
    impression: str | None = None


_NO_TEXT = _StudyText()


def _study_text(path: Path) -> _StudyText:
    """The study's report text; none of it when the study has no report file."""
    try:
        report = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return _NO_TEXT
    sections = report_sections(report)
    return _StudyText(extract_indication(report), sections.get("FINDINGS"), sections.get("IMPRESSION"))


def read_mimic_cxr_lt(
    images: str | Path,
    label_files: dict[str, Path],
    target: Schema,
    metadata: Path | None = None,
    reports: Path | None = None,
    edstays: Path | None = None,
    triage: Path | None = None,
) -> SourceTable:
    """`label_files` maps split -> CSV. ED vitals need `metadata` (study times) and both ED tables."""
    if (edstays is None) != (triage is None):
        raise InputError("--ed-stays and --ed-triage go together (stays give the time window, triage the vitals)")
    if edstays is not None and metadata is None:
        raise InputError("--ed-stays needs --metadata: the ED join uses the study time from the MIMIC-CXR metadata")
    frames, unused = [], {}
    for split, path in label_files.items():
        frame, labels, extra = _read_labels(Path(path), target)
        frames.append((split, frame, labels))
        if extra:
            unused[str(path)] = extra
    meta = None
    if metadata is not None:
        meta = read_table(metadata)
        require_columns(meta, METADATA_COLUMNS, metadata)
        meta = meta.assign(time=study_times(meta)).set_index("dicom_id")
    vitals: dict[str, dict[str, float]] = {}
    if edstays is not None and triage is not None and meta is not None:
        studies = pd.concat([f[["dicom_id", "study_id", "subject_id"]] for _, f, _ in frames])
        studies = studies.assign(time=studies["dicom_id"].map(meta["time"])).drop_duplicates("study_id")
        vitals = join_vitals(studies, edstays, triage)
    texts: dict[str, _StudyText] = {}
    records = []
    for split, frame, labels in frames:
        views = frame["ViewPosition"] if "ViewPosition" in frame.columns else pd.Series(index=frame.index, dtype=str)
        if meta is not None:
            views = views.fillna(frame["dicom_id"].map(meta["ViewPosition"]))
        rows = zip(frame["dicom_id"], frame["subject_id"], frame["study_id"], frame["fpath"], views)
        for i, (dicom, subject, study, fpath, view) in enumerate(rows):
            if reports is not None and study not in texts:
                texts[study] = _study_text(study_report_path(reports, str(subject), str(study)))
            text = texts.get(study, _NO_TEXT)
            records.append(
                Record(
                    image_id=str(dicom),
                    study_id=str(study),
                    patient_id=str(subject),
                    source="mimic-cxr-lt",
                    labels=labels[i],
                    path=os.path.join(images, str(fpath)),
                    view=normalise_view(view),
                    split=split,
                    indication=text.indication,
                    findings=text.findings,
                    impression=text.impression,
                    vitals=vitals.get(str(study), {}),
                )
            )
    files = [str(p) for p in label_files.values()] + [str(p) for p in (images, metadata, reports, edstays, triage) if p]
    notes = {
        "unused_columns": unused,
        "with_indication": sum(r.indication is not None for r in records),
        "with_report": sum(r.findings is not None or r.impression is not None for r in records),
        "with_vitals": sum(bool(r.vitals) for r in records),
    }
    return SourceTable("mimic-cxr-lt", records, files, notes)
