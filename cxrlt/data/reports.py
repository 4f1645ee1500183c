"""Radiology report text: the IU X-ray (Open-i, "NLMCXR") report XML reader.

One XML file per report, holding the report's sections (`<AbstractText Label="FINDINGS">` ...), its
images (`<parentImage id=...>`) and the curators' MeSH terms (`<MeSH><major>`), read from the
published .tgz or from an unpacked folder. The reports feed keyword mining (cxrlt.data.mining); their
MeSH terms are an independent reference for checking the mined labels.
"""

from __future__ import annotations

import os
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cxrlt.errors import InputError


@dataclass(frozen=True)
class Report:
    """sections: upper-case label -> text (empty sections left out); image_ids: the report's images."""

    report_id: str
    sections: dict[str, str]
    image_ids: tuple[str, ...] = ()
    mesh: tuple[str, ...] = field(default=())


def parse_iu_report(text: bytes | str, origin: str) -> Report:
    """One IU X-ray report from its XML; `origin` names the file in errors."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise InputError(f"{origin}: not a readable report XML: {e}") from None
    uid = root.find("uId")
    report_id = uid.get("id") if uid is not None else None
    if not report_id:
        raise InputError(f"{origin}: no <uId id=...> report id")
    sections = {
        node.get("Label", "").upper(): (node.text or "").strip()
        for node in root.iter("AbstractText")
        if (node.text or "").strip()
    }
    images = tuple(node.get("id", "") for node in root.iter("parentImage") if node.get("id"))
    mesh = tuple((node.text or "").strip() for node in root.iter("major") if (node.text or "").strip())
    return Report(report_id, sections, images, mesh)


def _xml_members(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        for file in sorted(path.rglob("*.xml")):
            yield str(file), file.read_bytes()
        return
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".xml"):
                    handle = archive.extractfile(member)
                    if handle is None:  # isfile() members always have data; None would be a tarfile bug
                        raise InputError(f"{path}:{member.name}: unreadable archive member")
                    yield f"{path}:{member.name}", handle.read()
    except tarfile.TarError as e:
        raise InputError(f"{path}: not a readable report archive: {e}") from None


def read_iu_reports(path: str | os.PathLike) -> list[Report]:
    """Every report in an IU X-ray .tgz (NLMCXR_reports.tgz) or a folder of its XML files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"reports {path}: no such file or folder")
    reports = [parse_iu_report(data, origin) for origin, data in _xml_members(path)]
    if not reports:
        raise InputError(f"reports {path}: no report XML files in it")
    return reports
