"""Reports for the rehearsal set: real IU X-ray reports paired with studies and written in MIMIC layout.

Each rehearsal study gets the IU report (cxrlt.data.reports) whose curated MeSH findings best match the
study's NIH labels (Jaccard over the NIH classes, unused reports first, seeded tie-break), so the text
carries the study's findings as a MIMIC report would. The same report's MeSH terms add positives for
the CXR-LT classes NIH never annotated, through MESH_RULES, a table built from the MeSH strings of the
real archive ("Descriptor/qualifier/qualifier..."). Classes with no clear MeSH counterpart (Fissure,
Infarction, Lobar / Round(ed) Atelectasis, Pleural Other, Pulmonary Embolism, Cardiomyopathy) get none.

The text is written as a MIMIC-CXR report: a centred FINAL REPORT line, upper-case section headers,
lines wrapped with a leading space, IU's "XXXX" de-identification as MIMIC's "___", and the real-world
variants readers must survive (HISTORY: for INDICATION, IMPRESSION only, text on the header line).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence

import numpy as np

from cxrlt.data.reports import Report
from cxrlt.labels import NIH_14, canonical_name

# (MeSH descriptor, qualifiers that must all appear, CXR-LT / Task-3 classes). A qualifier matches itself
# or a longer qualifier it begins ("aorta" matches "aorta, thoracic"). Descriptors compare case-blind.
MESH_RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # NIH's own classes: used to pair reports with studies (the study's NIH labels stay the truth).
    ("normal", (), ("Normal",)),
    ("Cardiomegaly", (), ("Cardiomegaly",)),
    ("Cardiac Shadow", ("enlarged",), ("Cardiomegaly",)),
    ("Pulmonary Atelectasis", (), ("Atelectasis",)),
    ("Pleural Effusion", (), ("Pleural Effusion",)),
    ("Infiltrate", (), ("Infiltration",)),
    ("Pneumonia", (), ("Pneumonia",)),
    ("Consolidation", (), ("Consolidation",)),
    ("Pulmonary Edema", (), ("Edema",)),
    ("Emphysema", (), ("Emphysema",)),
    ("Pulmonary Emphysema", (), ("Emphysema",)),
    ("Bullous Emphysema", (), ("Emphysema", "Bulla")),
    ("Nodule", (), ("Nodule",)),
    ("Mass", (), ("Mass",)),
    ("Pneumothorax", (), ("Pneumothorax",)),
    ("Hemopneumothorax", (), ("Pneumothorax",)),
    ("Thickening", ("pleura",), ("Pleural Thickening",)),
    ("Pulmonary Fibrosis", (), ("Fibrosis",)),
    ("Fibrosis", (), ("Fibrosis",)),
    ("Hernia, Hiatal", (), ("Hernia",)),
    ("Hernia, Diaphragmatic", (), ("Hernia",)),
    # Classes NIH lacks: added to the study's labels from its paired report.
    ("Opacity", ("lung",), ("Lung Opacity",)),
    ("Airspace Disease", (), ("Lung Opacity",)),
    ("Density", ("lung",), ("Lung Opacity",)),
    ("Cysts", (), ("Lung Lesion",)),
    ("Cavitation", (), ("Lung Lesion",)),
    ("Calcified Granuloma", (), ("Granuloma",)),
    ("Granulomatous Disease", (), ("Granuloma",)),
    ("Granuloma", (), ("Granuloma",)),
    ("Aorta", ("tortuous",), ("Tortuous Aorta",)),
    ("Aorta, Thoracic", ("tortuous",), ("Tortuous Aorta",)),
    ("Calcinosis", ("aorta",), ("Calcification of the Aorta",)),
    ("Atherosclerosis", ("aorta",), ("Calcification of the Aorta",)),
    ("Fractures, Bone", (), ("Fracture",)),
    ("Fractures, Bone", ("ribs",), ("Rib Fracture",)),
    ("Fractures, Bone", ("clavicle",), ("Clavicle Fracture",)),
    ("Kyphosis", (), ("Kyphosis",)),
    ("Catheters, Indwelling", (), ("Support Devices",)),
    ("Implanted Medical Device", (), ("Support Devices",)),
    ("Medical Device", (), ("Support Devices",)),
    ("Tube, Inserted", (), ("Support Devices",)),
    ("Stents", (), ("Support Devices",)),
    ("Subcutaneous Emphysema", (), ("Subcutaneous Emphysema",)),
    ("Mediastinal Emphysema", (), ("Pneumomediastinum",)),
    ("Pneumoperitoneum", (), ("Pneumoperitoneum",)),
    ("Hydropneumothorax", (), ("Hydropneumothorax",)),
    ("Tuberculosis", (), ("Tuberculosis",)),
    ("Hypertension, Pulmonary", (), ("Pulmonary Hypertension",)),
    ("Lung", ("azygos lobe",), ("Azygos Lobe",)),
    ("Lymph Nodes", ("enlarged",), ("Adenopathy",)),
    ("Mediastinum", ("lymph nodes", "enlarged"), ("Adenopathy",)),
    ("Lung", ("hilum", "lymph nodes", "enlarged"), ("Adenopathy",)),
    ("Mediastinum", ("prominent",), ("Enlarged Cardiomediastinum",)),
    # Task 3 (zero-shot): never in the CXR-LT CSVs, only in the rehearsal's answer key.
    ("Blister", (), ("Bulla",)),
    ("Scoliosis", (), ("Scoliosis",)),
    ("Bone Diseases, Metabolic", (), ("Osteopenia",)),
    ("Osteoporosis", (), ("Osteopenia",)),
    ("Lung", ("hilum",), ("Hilum",)),
    ("Pulmonary Artery", ("hilum",), ("Hilum",)),
    ("Opacity", ("hilum",), ("Hilum",)),
)

# The classes NIH annotates, in CXR-LT spelling ("No Finding" -> "Normal"): what pairing compares.
NIH_CLASSES = tuple(canonical_name(c, "nih") for c in (*NIH_14.classes, "No Finding"))

VARIANTS = ("standard", "standard", "standard", "standard", "inline", "inline", "history", "impression")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def mesh_classes(terms: Iterable[str]) -> set[str]:
    """The CXR-LT / Task-3 classes the MeSH terms state (MESH_RULES)."""
    out: set[str] = set()
    for term in terms:
        descriptor, *qualifiers = [_norm(part) for part in term.split("/")]
        for rule_descriptor, needed, classes in MESH_RULES:
            if _norm(rule_descriptor) != descriptor:
                continue
            if all(any(q == n or q.startswith(n + ",") for q in qualifiers) for n in needed):
                out.update(classes)
    return out


class ReportPairer:
    """Picks, for each study's NIH label set, the best-matching report; each report once while possible."""

    def __init__(self, reports: Sequence[Report], rng: np.random.Generator):
        self.reports = list(reports)
        self.classes = [mesh_classes(r.mesh) for r in self.reports]
        self.matrix = np.array([[c in cs for c in NIH_CLASSES] for cs in self.classes], dtype=np.float64)
        self.used = np.zeros(len(self.reports), dtype=bool)
        self.rng = rng

    def pair(self, labels: set[str]) -> tuple[Report, set[str]]:
        wanted = np.array([c in labels for c in NIH_CLASSES], dtype=np.float64)
        inter = self.matrix @ wanted
        union = self.matrix.sum(axis=1) + wanted.sum() - inter
        score = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        best = np.lexsort((self.rng.random(len(score)), ~self.used, score))[-1]
        self.used[best] = True
        return self.reports[best], self.classes[best]


def _deidentify(text: str) -> str:
    return re.sub(r"X{3,}", "___", text)


def _wrap(text: str) -> list[str]:
    return [f" {line}" for line in textwrap.wrap(_deidentify(text), width=76)] or [" "]


def _section(header: str, text: str, inline: bool) -> list[str]:
    if inline:
        lines = _wrap(text)
        return [f" {header}:  {lines[0].strip()}", *lines[1:], " "]
    return [f" {header}: ", " ", *_wrap(text), " "]


def render_report(report: Report, examination: str, technique: str, variant: str) -> str:
    """MIMIC-CXR report text for an IU report; `variant` in VARIANTS picks a real-world layout."""
    sections = report.sections
    lines = [f"{'FINAL REPORT':>45}"]
    if variant != "impression":
        lines += [f" EXAMINATION:  {examination}", " "]
        if sections.get("INDICATION"):
            header = "HISTORY" if variant == "history" else "INDICATION"
            lines += _section(header, sections["INDICATION"], inline=True)
        lines += [f" TECHNIQUE:  {technique}", " "]
        lines += _section("COMPARISON", sections.get("COMPARISON") or "None.", inline=True)
        if sections.get("FINDINGS"):
            lines += _section("FINDINGS", sections["FINDINGS"], inline=variant == "inline")
    impression = sections.get("IMPRESSION") or sections.get("FINDINGS") or "No acute cardiopulmonary process."
    lines += _section("IMPRESSION", impression, inline=variant == "inline")
    return "\n".join(lines) + "\n"


def has_indication(report: Report, variant: str) -> bool:
    """Whether render_report writes an indication (INDICATION or HISTORY) section for this report."""
    return variant != "impression" and bool(report.sections.get("INDICATION"))
