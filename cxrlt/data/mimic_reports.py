"""MIMIC-CXR free-text reports: sections of `files/pNN/pSUBJECT/sSTUDY.txt`, and the tree of them.

A report is a `FINAL REPORT` line, then upper-case headers ending in a colon (EXAMINATION, INDICATION,
TECHNIQUE, COMPARISON, FINDINGS, IMPRESSION, ...), each with its text on the same line or below
(mimic-formats.md). Every section is optional. The report-text consumers (the contrastive stage, keyword
mining) want FINDINGS and IMPRESSION, so their spelling variants are folded into those two names
(FINDING -> FINDINGS; IMPRESSIONS, CONCLUSION(S) -> IMPRESSION). A report with neither header but with
text outside any header (the "no section headers at all" variant) keeps that text as FINDINGS, since
dropping it would lose the only description of the image; a report with headers keeps only them.

Reports become `cxrlt.data.reports.Report`s, the type IU X-ray reports already are, so mining reads both
alike: report_id is the study id ("s" + digits, as the CXR-LT CSVs spell it) and image_ids are the
study's DICOM ids, taken from the MIMIC-CXR-JPG folder `files/pNN/pSUBJECT/sSTUDY/*.jpg` when given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from cxrlt.data.reports import Report
from cxrlt.errors import InputError

# A header: upper-case words (spaces, &, /, parentheses, hyphens inside) ending in ':' at a line start.
# Two letters at least, so "A:" in running text is not one; lower-case text never matches.
_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z &/()-]*[A-Z)])[ \t]*:", re.MULTILINE)
_ALIASES = {
    "FINDING": "FINDINGS",
    "IMPRESSIONS": "IMPRESSION",
    "CONCLUSION": "IMPRESSION",
    "CONCLUSIONS": "IMPRESSION",
}
TEXT_SECTIONS = ("FINDINGS", "IMPRESSION")
_PREAMBLE = re.compile(r"^\s*FINAL REPORT\s*", re.IGNORECASE)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def report_sections(text: str) -> dict[str, str]:
    """Upper-case section name -> its text (whitespace collapsed; empty sections left out). A name
    that occurs twice keeps its first non-empty text; FINDINGS / IMPRESSION variants are folded."""
    matches = list(_HEADER.finditer(text))
    sections: dict[str, str] = {}
    for match, following in zip(matches, [*matches[1:], None]):
        name = " ".join(match.group("name").split())
        name = _ALIASES.get(name, name)
        body = _collapse(text[match.end() : following.start() if following else len(text)])
        if body and not sections.get(name):
            sections[name] = body
    if not any(name in sections for name in TEXT_SECTIONS):
        loose = _PREAMBLE.sub("", text[: matches[0].start()] if matches else text)
        if _collapse(loose):
            sections["FINDINGS"] = _collapse(loose)
    return sections


def study_report_path(reports: str | os.PathLike, subject_id: str, study_id: str) -> Path:
    """<reports>/files/pNN/pSUBJECT/sSTUDY.txt; `reports` is the MIMIC-CXR 2.0.0 root or its files/."""
    root = Path(reports)
    root = root if root.name == "files" else root / "files"
    study = study_id if str(study_id).startswith("s") else f"s{study_id}"
    return root / f"p{str(subject_id)[:2]}" / f"p{subject_id}" / f"{study}.txt"


def read_report_sections(path: str | os.PathLike) -> dict[str, str]:
    """The sections of one report file; {} when the study has no report file."""
    try:
        return report_sections(Path(path).read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return {}


def _report_files(root: Path) -> Iterator[Path]:
    files = root if root.name == "files" else root / "files"
    if not files.is_dir():
        raise InputError(
            f"reports {root}: no files/ folder (expected the MIMIC-CXR files/pNN/pSUBJECT/sSTUDY.txt tree)"
        )
    yield from sorted(files.glob("p[0-9][0-9]/p*/s*.txt"))


def is_mimic_tree(path: str | os.PathLike) -> bool:
    """Whether `path` is a MIMIC-CXR report tree (a folder that is, or holds, files/pNN/...), as opposed
    to IU X-ray's .tgz or folder of XML."""
    path = Path(path)
    files = path if path.name == "files" else path / "files"
    return files.is_dir() and next(files.glob("p[0-9][0-9]/p*/s*.txt"), None) is not None


def read_mimic_reports(reports: str | os.PathLike, images: str | os.PathLike | None = None) -> list[Report]:
    """Every report of a MIMIC-CXR tree. `images`: the MIMIC-CXR-JPG root (or its files/), whose
    `pNN/pSUBJECT/sSTUDY/*.jpg` give each report's image ids; without it, reports carry none."""
    root = Path(reports)
    if not root.exists():
        raise InputError(f"reports {root}: no such folder")
    image_root = None
    if images is not None:
        image_root = Path(images) if Path(images).name == "files" else Path(images) / "files"
        if not image_root.is_dir():
            raise InputError(f"images {images}: no files/ folder (expected the MIMIC-CXR-JPG layout)")
    out = []
    for path in _report_files(root):
        image_ids: tuple[str, ...] = ()
        if image_root is not None:
            folder = image_root / path.parent.parent.name / path.parent.name / path.stem
            image_ids = tuple(sorted(p.stem for p in folder.glob("*.jpg")))
        out.append(Report(path.stem, read_report_sections(path), image_ids))
    if not out:
        raise InputError(f"reports {root}: no files/pNN/pSUBJECT/sSTUDY.txt reports in it")
    return out
