"""Class descriptions: the editable text that, with a class's name, makes its zero-shot query.

A descriptions file maps class names to short radiological descriptions, as TOML (a `[descriptions]`
table of strings) or CSV (columns `class,description`). A few ship with the package under
cxrlt/resources/descriptions/ and are named by their stem (`nih-14`, `cxr-lt-2024-task3`); any other
file is named by its path. A class's query text is its prompt (the model's `class_prompt` filled with
the name) followed by ": <description>" when it has one, so a new finding needs only a name and,
better, a line of text.
"""

from __future__ import annotations

import csv
import os
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from cxrlt.errors import InputError

TABLE = "descriptions"
CSV_COLUMNS = ("class", "description")


def packaged_descriptions() -> dict[str, Path]:
    """Name (file stem) -> path of the descriptions files shipped with cxrlt."""
    folder = Path(str(resources.files("cxrlt") / "resources" / "descriptions"))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def _resolve(source: str | os.PathLike) -> Path:
    packaged = packaged_descriptions()
    if str(source) in packaged:
        return packaged[str(source)]
    path = Path(source)
    if not path.is_file():
        raise InputError(f"descriptions {source}: no such file, and not a packaged name ({', '.join(packaged)})")
    return path


def _read_toml(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: invalid TOML: {e}") from None
    table = data.get(TABLE)
    if not isinstance(table, dict):
        raise InputError(f'{path}: needs a [{TABLE}] table of class name = "description"')
    bad = [k for k, v in table.items() if not isinstance(v, str)]
    if bad:
        raise InputError(f"{path}: [{TABLE}] {bad[0]!r} must be a string")
    return dict(table)


def _read_csv(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(CSV_COLUMNS) <= set(reader.fieldnames):
            raise InputError(f"{path}: needs columns {', '.join(CSV_COLUMNS)}; found {reader.fieldnames}")
        descriptions: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            name = (row["class"] or "").strip()
            if not name:
                raise InputError(f"{path}: line {line}: empty class name")
            if name in descriptions:
                raise InputError(f"{path}: line {line}: class {name!r} described twice")
            descriptions[name] = (row["description"] or "").strip()
    return descriptions


def load_descriptions(source: str | os.PathLike) -> dict[str, str]:
    """Class name -> description from a packaged name or a .toml / .csv file."""
    path = _resolve(source)
    if path.suffix.lower() == ".toml":
        return _read_toml(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    raise InputError(f"descriptions {path}: expected a .toml or .csv file")


def class_texts(classes: Sequence[str], prompt: str = "{}", descriptions: Mapping[str, str] | None = None) -> list[str]:
    """The query text of each class: the prompt with its name, then ": description" if it has one."""
    descriptions = descriptions or {}
    return [
        f"{prompt.format(name)}: {descriptions[name]}" if descriptions.get(name) else prompt.format(name)
        for name in classes
    ]
