"""The shard-set contract: what a folder of shards and its `_index.json` hold, read and written here.

A shard set is a folder of `{split}-%06d.tar` files (each shard holds one split only, so a reader picks
a split by picking shards) plus `_index.json`:

    {schema, classes, level ("image" | "study"), num_samples, shards: [{file, split, num_samples}],
     splits: {split: num_samples}, class_counts: {class: positives}, split_class_counts:
     {split: {class: positives}}, split_known_counts: {split: {class: known}}, sources: [...],
     skipped: [{id, path, reason, detail}], num_skipped, image_format, max_size, plan_hash, views_dropped,
     created_by}

`class_counts` counts samples whose label is 1 (unknown and negative do not count); at study level a
sample is a study. `split_known_counts` counts samples whose label is known (1 or 0), so a class never
annotated in a split (known 0) can be told from one annotated without a positive; indexes written
before it existed lack it (None). `plan_hash` fingerprints the inputs and options, so a resumed run can tell its own
partial output from another run's. A study-level set stores every view of a study by default;
`views_dropped` counts the views left out by an explicit `--max-views` cap (by request, not skipped for
a fault), 0 without one.

Samples (key = image id, or study id at study level; keys never contain "." or "/"):
- image level: `img.jpg` or `img.png` (8-bit grayscale, long side <= max_size) and `json` with
  {image_id, study_id, patient_id, view, age, sex, split, source, synthetic, labels}.
- study level: `0.img.jpg` ... `k.img.jpg` (every view of the study unless capped, frontal views
  first; a study may hold more views than a study model's slots, which the readers handle) and `json` adding
  {image_ids: [...], views: [...], indication: str | null, vitals: {name: value}}.
`labels` is a list of floats in schema order: 1 positive, 0 negative, -1 unknown. Both levels may add
`findings` and `impression` (the study report's sections, str), present only when the source had them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrlt.atomic import write_text_atomic
from cxrlt.errors import InputError

INDEX_NAME = "_index.json"
LEVELS = ("image", "study")
IMAGE_FORMATS = ("jpg", "png")
SPLITS = ("train", "dev", "test")

# View vocabulary; position 0 is the padding id used by the study reader. Frontal views come first so
# "order: frontal first" is a sort on this position.
VIEW_TYPES = ("pad", "PA", "AP", "LATERAL", "LL", "OTHER", "UNKNOWN")
FRONTAL_VIEWS = ("PA", "AP")
_VIEW_ALIASES = {
    "PA": "PA",
    "POSTEROANTERIOR": "PA",
    "AP": "AP",
    "ANTEROPOSTERIOR": "AP",
    "AP_HORIZONTAL": "AP",
    "AP AXIAL": "AP",
    "AP LLD": "AP",
    "AP RLD": "AP",
    "PA LLD": "PA",
    "PA RLD": "PA",
    "LATERAL": "LATERAL",
    "L": "LATERAL",
    "LAT": "LATERAL",
    "RL": "LATERAL",
    "LL": "LL",
    "LEFT LATERAL": "LL",
    "XTABLE LATERAL": "LL",
}
_UNKNOWN_VIEWS = ("", "NAN", "NONE", "UNK", "UNKNOWN")

# Triage vitals of MIMIC-IV-ED (column names of triage.csv), in the order the study reader stacks them.
VITALS = ("temperature", "heartrate", "resprate", "o2sat", "sbp", "dbp")

SEXES = ("unknown", "F", "M")

_KEY_UNSAFE = re.compile(r"[./\\\s]+")


def sample_key(identifier: str) -> str:
    """A tar-safe key: webdataset splits a member name at its first '.', so dots and slashes go."""
    key = _KEY_UNSAFE.sub("_", str(identifier)).strip("_")
    if not key:
        raise InputError(f"identifier {identifier!r} gives an empty sample key")
    return key


def normalise_view(view: object) -> str:
    """One of VIEW_TYPES[1:] for a source's view/projection spelling (MIMIC, NIH, CheXpert, PadChest)."""
    text = "" if view is None else str(view).strip().upper()
    if text in _UNKNOWN_VIEWS:
        return "UNKNOWN"
    return _VIEW_ALIASES.get(text, "OTHER")


def normalise_sex(sex: object) -> str | None:
    text = "" if sex is None else str(sex).strip().upper()
    if text in ("F", "FEMALE"):
        return "F"
    if text in ("M", "MALE"):
        return "M"
    return None


def view_order(view: str) -> int:
    return VIEW_TYPES.index(view)


@dataclass(frozen=True)
class ShardEntry:
    file: str
    split: str
    num_samples: int


@dataclass
class ShardIndex:
    """The parsed `_index.json` of a shard set (see the module docstring for field meanings)."""

    schema: str
    classes: list[str]
    level: str
    num_samples: int
    shards: list[ShardEntry]
    splits: dict[str, int]
    class_counts: dict[str, int]
    split_class_counts: dict[str, dict[str, int]]
    sources: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    num_skipped: int
    image_format: str
    max_size: int
    plan_hash: str
    views_dropped: int = 0
    created_by: dict[str, Any] = field(default_factory=dict)
    split_known_counts: dict[str, dict[str, int]] | None = None

    def positive_counts(self, split: str) -> list[int | None]:
        """Positives per class of one split in class order; None for a class with no known label there.

        A class no sample of the split annotates (e.g. one a source lacks) has no frequency at all, which
        count-derived loss weights must not read as 0 positives. An index without known counts cannot
        tell the two apart, so there a class without positives is None as well.
        """
        positives = self.split_class_counts.get(split, {})
        if self.split_known_counts is None:
            return [positives.get(c) or None for c in self.classes]
        known = self.split_known_counts.get(split, {})
        return [positives.get(c, 0) if known.get(c, 0) > 0 else None for c in self.classes]

    def shards_for(self, split: str | None) -> list[ShardEntry]:
        """The shards of one split (all shards for None), in index order."""
        if split is not None and split not in self.splits:
            raise InputError(f"shard set has no split {split!r}; it has {sorted(self.splits)}")
        return [s for s in self.shards if split is None or s.split == split]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def index_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / INDEX_NAME


def write_index(directory: str | os.PathLike, index: ShardIndex) -> Path:
    return write_text_atomic(index_path(directory), index.to_json())


def read_index(directory: str | os.PathLike) -> ShardIndex:
    """Load and check a shard set's index; an incomplete or foreign folder is an InputError."""
    path = index_path(directory)
    if not path.is_file():
        raise InputError(f"{directory}: no {INDEX_NAME}; not a finished shard set (run `cxrlt shard` again)")
    try:
        data: Mapping[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        shards = [ShardEntry(**s) for s in data["shards"]]
        index = ShardIndex(**{**data, "shards": shards})
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: not a cxrlt shard index: {e}") from None
    if index.level not in LEVELS:
        raise InputError(f"{path}: level {index.level!r} is not one of {LEVELS}")
    for shard in index.shards:
        if not (Path(directory) / shard.file).is_file():
            raise InputError(f"{path}: listed shard {shard.file} is missing")
    return index
