"""The embedded NIH sample (cxrlt/resources/nih-starter, see its PROVENANCE.md), read as an NIH source."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cxrlt.data.records import SourceTable
from cxrlt.data.sources.nih import read_nih
from cxrlt.labels import Schema


def starter_folder() -> Path:
    return Path(str(resources.files("cxrlt") / "resources" / "nih-starter"))


def read_starter(target: Schema) -> SourceTable:
    folder = starter_folder()
    return read_nih(folder / "labels.csv", folder / "images", target, source="starter")
