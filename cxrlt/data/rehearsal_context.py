"""MIMIC-CXR metadata and MIMIC-IV-ED tables for the rehearsal set (invented values, real formats).

Values are invented but shaped as the real files are (../shared/reference/mimic-formats.md): StudyTime
written as a number (leading zeros lost, fraction sometimes absent); ED stays whose [intime, outtime]
holds about 45% of the studies, stays that cover no study, a subject with two stays, blank vitals, free
text pain scores and a few implausible values (temperature in °C, o2sat 101).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

FRONTAL = ("AP", "PA", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD", "LAO", "RAO")
# ViewPosition mix of the CXR-LT 2024 training split (AP 39%, PA 26%, LATERAL 22%, LL 9%, rare, ~4% blank),
# reached with realistic studies: one view drawn from FIRST_VIEW_MIX (mostly frontal), the others from
# OTHER_VIEW_MIX (mostly lateral), then shuffled within the study.
FIRST_VIEW_MIX = {"AP": 0.55, "PA": 0.38, "AP AXIAL": 0.01, "PA LLD": 0.01, "AP LLD": 0.005, "LAO": 0.005, "": 0.04}
OTHER_VIEW_MIX = {
    "LATERAL": 0.5,
    "LL": 0.2,
    "AP": 0.12,
    "PA": 0.1,
    "SWIMMERS": 0.01,
    "XTABLE LATERAL": 0.01,
    "": 0.08,
}
VIEW_MEANING = {
    "AP": "antero-posterior",
    "PA": "postero-anterior",
    "LATERAL": "lateral",
    "LL": "left lateral",
    "AP AXIAL": "antero-posterior",
    "PA LLD": "postero-anterior",
    "AP LLD": "antero-posterior",
    "LAO": "left anterior oblique",
    "SWIMMERS": "lateral",
    "XTABLE LATERAL": "lateral",
    "": "",
}
METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
STAY_COLUMNS = (
    "subject_id",
    "hadm_id",
    "stay_id",
    "intime",
    "outtime",
    "gender",
    "race",
    "arrival_transport",
    "disposition",
)
TRIAGE_COLUMNS = (
    "subject_id",
    "stay_id",
    "temperature",
    "heartrate",
    "resprate",
    "o2sat",
    "sbp",
    "dbp",
    "pain",
    "acuity",
    "chiefcomplaint",
)
RACES = (
    "WHITE",
    "WHITE",
    "WHITE",
    "BLACK/AFRICAN AMERICAN",
    "HISPANIC/LATINO - PUERTO RICAN",
    "ASIAN - CHINESE",
    "OTHER",
    "UNKNOWN",
    "WHITE - OTHER EUROPEAN",
)
TRANSPORT = ("WALK IN", "WALK IN", "AMBULANCE", "AMBULANCE", "UNKNOWN", "OTHER", "HELICOPTER")
DISPOSITION = ("ADMITTED", "ADMITTED", "HOME", "HOME", "HOME", "TRANSFER", "LEFT WITHOUT BEING SEEN", "OTHER", "ELOPED")
COMPLAINTS = (
    "Dyspnea",
    "Chest pain",
    "Cough",
    "Fever",
    "SOB",
    "Abd pain",
    "Transfer",
    "Weakness",
    "Fall",
    "s/p Fall",
    "Hypoxia",
    "Altered mental status",
    "Dyspnea, Cough",
    "CHEST PAIN",
    "Syncope",
)
PAIN_WORDS = ("unable", "UTA", "Critical", "denies", "uta", "10 ", "8-9")


@dataclass
class StudyEvent:
    """What the context tables need of one study: who, when, which views."""

    study_id: int
    subject_id: int
    time: datetime
    dicom_ids: list[str]
    views: list[str]


def procedure(views: list[str]) -> tuple[str, str]:
    """(PerformedProcedureStepDescription / ProcedureCode meaning, report TECHNIQUE line) for a study."""
    if "PA" in views and any(v in ("LATERAL", "LL") for v in views):
        return "CHEST (PA AND LAT)", "Chest PA and lateral"
    if "AP" in views and len(views) == 1:
        return "CHEST (PORTABLE AP)", "Portable AP chest radiograph"
    if len(views) == 1:
        return "CHEST (SINGLE VIEW)", "Single frontal view of the chest"
    return "CHEST (PRE-OP PA & LAT)", "Chest PA and lateral"


def study_time_text(time: datetime, rng: np.random.Generator) -> str:
    """HHMMSS.fff as a number prints it: 08:32:14.578 -> '83214.578'; trailing zeros and the fraction drop."""
    whole = str(time.hour * 10000 + time.minute * 100 + time.second)
    if rng.random() < 0.2:
        return whole
    fraction = f"{int(rng.integers(0, 1000)):03d}".rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def metadata_frame(events: list[StudyEvent], size: tuple[int, int], rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for event in events:
        description, _ = procedure(event.views)
        date, time = event.time.strftime("%Y%m%d"), study_time_text(event.time, rng)
        for dicom, view in zip(event.dicom_ids, event.views):
            erect = view in ("PA", "LATERAL") or rng.random() < 0.5
            orientation = "" if rng.random() < 0.03 else "Erect" if erect else "Recumbent"
            rows.append(
                (
                    dicom,
                    event.subject_id,
                    event.study_id,
                    description,
                    view,
                    size[1],
                    size[0],
                    date,
                    time,
                    description,
                    VIEW_MEANING[view],
                    orientation,
                )
            )
    return pd.DataFrame(rows, columns=list(METADATA_COLUMNS))


def _vital(rng: np.random.Generator, mean: float, sd: float, digits: int, low: float, high: float) -> float | None:
    if rng.random() < 0.08:
        return None
    return round(float(np.clip(rng.normal(mean, sd), low, high)), digits)


def _triage(subject: int, stay: int, rng: np.random.Generator) -> dict[str, object]:
    temperature = _vital(rng, 98.3, 0.9, 1, 94.0, 104.5)
    if temperature is not None and rng.random() < 0.03:
        temperature = round((temperature - 32) * 5 / 9, 1)  # charted in °C
    o2sat = _vital(rng, 97, 2.5, 0, 80, 100)
    if o2sat is not None and rng.random() < 0.03:
        o2sat = 101.0
    pain = str(rng.choice(PAIN_WORDS)) if rng.random() < 0.1 else str(rng.integers(0, 11))
    pain = "" if rng.random() < 0.05 else pain
    return {
        "subject_id": subject,
        "stay_id": stay,
        "temperature": temperature,
        "heartrate": _vital(rng, 88, 18, 0, 40, 170),
        "resprate": _vital(rng, 18, 3, 0, 10, 40),
        "o2sat": o2sat,
        "sbp": _vital(rng, 135, 22, 0, 70, 220),
        "dbp": _vital(rng, 78, 14, 0, 35, 130),
        "pain": pain,
        "acuity": None if rng.random() < 0.02 else int(rng.choice([1, 2, 2, 2, 3, 3, 3, 4, 5])),
        "chiefcomplaint": str(rng.choice(COMPLAINTS)),
    }


def ed_frames(
    events: list[StudyEvent], genders: dict[int, str], rng: np.random.Generator, share: float = 0.45
) -> tuple[pd.DataFrame, pd.DataFrame, set[int]]:
    """(edstays, triage, ids of the studies inside a stay). Stay ids are 3xxxxxxx, admissions 2xxxxxxx."""
    stays, triage, covered = [], [], set()
    stay_ids = iter(rng.choice(np.arange(30_000_000, 40_000_000), size=3 * len(events) + 10, replace=False).tolist())
    firsts: dict[int, datetime] = {}
    two_stays_forced, covered_subjects = False, set()
    for event in sorted(events, key=lambda e: (e.subject_id, e.time)):
        firsts.setdefault(event.subject_id, event.time)
        inside = rng.random() < share
        if not inside and not two_stays_forced and event.subject_id in covered_subjects:
            inside = two_stays_forced = True  # one subject with two stays, each holding a study
        if not inside:
            continue
        intime = event.time - timedelta(minutes=int(rng.integers(20, 6 * 60)))
        outtime = event.time + timedelta(minutes=int(rng.integers(30, 14 * 60)))
        stays.append(_stay(event.subject_id, next(stay_ids), intime, outtime, genders, rng))
        triage.append(_triage(event.subject_id, stays[-1]["stay_id"], rng))
        covered.add(event.study_id)
        covered_subjects.add(event.subject_id)
    for subject, first in sorted(firsts.items()):
        if rng.random() < 0.12:  # an earlier ED visit without a chest X-ray
            intime = first - timedelta(days=int(rng.integers(30, 400)), minutes=int(rng.integers(0, 1440)))
            outtime = intime + timedelta(hours=int(rng.integers(2, 20)))
            stays.append(_stay(subject, next(stay_ids), intime, outtime, genders, rng))
            triage.append(_triage(subject, stays[-1]["stay_id"], rng))
    stays_frame = pd.DataFrame(stays, columns=list(STAY_COLUMNS)).sort_values(["subject_id", "intime"])
    stays_frame["hadm_id"] = stays_frame["hadm_id"].astype("Int64")
    triage_frame = pd.DataFrame(triage, columns=list(TRIAGE_COLUMNS))
    triage_frame = triage_frame.set_index("stay_id").loc[stays_frame["stay_id"]].reset_index()[list(TRIAGE_COLUMNS)]
    triage_frame["acuity"] = triage_frame["acuity"].astype("Int64")
    return stays_frame, triage_frame, covered


def _stay(subject: int, stay: int, intime: datetime, outtime: datetime, genders: dict[int, str], rng) -> dict:
    disposition = str(rng.choice(DISPOSITION))
    admitted = disposition == "ADMITTED"
    return {
        "subject_id": subject,
        "hadm_id": int(rng.integers(20_000_000, 30_000_000)) if admitted else None,
        "stay_id": stay,
        "intime": intime.strftime("%Y-%m-%d %H:%M:%S"),
        "outtime": outtime.strftime("%Y-%m-%d %H:%M:%S"),
        "gender": genders.get(subject, "F"),
        "race": str(rng.choice(RACES)),
        "arrival_transport": str(rng.choice(TRANSPORT)),
        "disposition": disposition,
    }
