"""Clinical context for MIMIC-CXR studies: report INDICATION sections and MIMIC-IV-ED triage vitals.

Both are optional (CaMChex had them for a subset of studies): a study with no report, no INDICATION
section, no study time or no ED stay covering that time simply has none; nothing is guessed.
Reports live at `<reports>/files/pXX/pSUBJECT/sSTUDY.txt`. A study joins the ED stay of its subject
whose [intime, outtime] contains the study's StudyDate + StudyTime (from the MIMIC-CXR metadata); if
stays overlap, the latest admission wins. Vitals are the `triage.csv` values of that stay.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrlt.data.records import read_table
from cxrlt.data.shardset import VITALS
from cxrlt.tables import require_columns

# The indication goes by several headers in MIMIC-CXR (mimic-formats.md): INDICATION, HISTORY, CLINICAL
# INFORMATION, REASON FOR EXAMINATION; the first such section of a report is its indication.
_SECTION = re.compile(
    r"^[ \t]*(?:(?:CLINICAL[ \t]+)?(?:INDICATIONS?|HISTORY)|CLINICAL[ \t]+INFORMATION"
    r"|REASON[ \t]+FOR[ \t]+(?:THIS[ \t]+)?EXAM(?:INATION)?)"
    r"[ \t]*:(?P<body>.*?)(?=^[ \t]*[A-Z][A-Z &/()-]{2,}:|\Z)",
    re.MULTILINE | re.DOTALL,
)
STAY_COLUMNS = ("subject_id", "stay_id", "intime", "outtime")
TRIAGE_COLUMNS = ("subject_id", "stay_id", *VITALS)


def extract_indication(report: str) -> str | None:
    """The INDICATION (or HISTORY, ...) section of a report, whitespace collapsed; None when absent or empty."""
    match = _SECTION.search(report)
    if match is None:
        return None
    text = " ".join(match.group("body").split())
    return text or None


def report_path(reports: Path, image_fpath: str) -> Path:
    """files/p10/p10000032/s50414267/<dicom>.jpg -> <reports>/files/p10/p10000032/s50414267.txt."""
    study_dir = Path(image_fpath).parent
    return reports / study_dir.parent / f"{study_dir.name}.txt"


def read_indication(reports: Path, image_fpath: str) -> str | None:
    path = report_path(reports, image_fpath)
    try:
        return extract_indication(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None


def study_times(metadata: pd.DataFrame) -> pd.Series:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS[.ffff]) -> timestamps, NaT where either is missing."""
    time = metadata["StudyTime"].fillna("").str.split(".").str[0].str.zfill(6)
    return pd.to_datetime(metadata["StudyDate"].fillna("") + time, format="%Y%m%d%H%M%S", errors="coerce")


def join_vitals(studies: pd.DataFrame, edstays: Path, triage: Path) -> dict[str, dict[str, float]]:
    """study_id -> {vital: value} for studies (columns study_id, subject_id, time) inside an ED stay."""
    stays = read_table(edstays)
    require_columns(stays, STAY_COLUMNS, edstays)
    vitals = read_table(triage)
    require_columns(vitals, TRIAGE_COLUMNS, triage)
    stays = stays.assign(
        intime=pd.to_datetime(stays["intime"], errors="coerce"),
        outtime=pd.to_datetime(stays["outtime"], errors="coerce"),
    )
    joined = studies.dropna(subset=["time"]).merge(stays[list(STAY_COLUMNS)], on="subject_id")
    joined = joined[(joined["intime"] <= joined["time"]) & (joined["time"] <= joined["outtime"])]
    joined = joined.sort_values(["study_id", "intime"]).drop_duplicates("study_id", keep="last")
    joined = joined.merge(vitals[list(TRIAGE_COLUMNS)], on=["subject_id", "stay_id"])
    numbers = joined[list(VITALS)].apply(pd.to_numeric, errors="coerce")
    out: dict[str, dict[str, float]] = {}
    for study_id, row in zip(joined["study_id"], numbers.itertuples(index=False, name=None)):
        values = {name: float(v) for name, v in zip(VITALS, row) if pd.notna(v)}
        if values:
            out[study_id] = values
    return out
