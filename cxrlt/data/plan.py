"""From records to planned samples: split, group (image or study level), order, fingerprint.

The plan fixes which sample goes into which shard before any pixel is decoded. That is what makes the
output deterministic (same input and options -> byte-identical shards) and a killed run resumable: a
shard is complete or absent, and the plan says what a missing one must contain.

Within a split, samples are sorted by key and then permuted by the seed, so a shard mixes patients and
the training reader's shuffle buffer does not have to undo a sorted order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cxrlt.data.records import Record
from cxrlt.data.shardset import SPLITS, sample_key, view_order
from cxrlt.errors import InputError
from cxrlt.labels import UNKNOWN


@dataclass(frozen=True)
class PlannedImage:
    image_id: str
    path: str | None
    view: str


@dataclass
class PlannedSample:
    """One shard sample: an image, or a study's views in frontal-first order."""

    key: str
    split: str
    images: list[PlannedImage]
    labels: np.ndarray
    meta: dict[str, object]


@dataclass
class Plan:
    level: str
    samples: dict[str, list[PlannedSample]]
    views_dropped: int
    fingerprint: str


def study_labels(rows: np.ndarray) -> np.ndarray:
    """A study's label from its images': 1 if any view says 1, else 0 if any says 0, else unknown."""
    positive = (rows == 1.0).any(axis=0)
    negative = (rows == 0.0).any(axis=0)
    return np.where(positive, 1.0, np.where(negative, 0.0, UNKNOWN)).astype(np.float32)


def _image_meta(record: Record) -> dict[str, object]:
    meta: dict[str, object] = {
        "image_id": record.image_id,
        "study_id": record.study_id,
        "patient_id": record.patient_id,
        "view": record.view,
        "age": record.age,
        "sex": record.sex,
        "split": record.split,
        "source": record.source,
        "synthetic": False,
    }
    _add_report(meta, [record])
    return meta


def _add_report(meta: dict[str, object], records: list[Record]) -> None:
    """The report's FINDINGS / IMPRESSION text (the first record that has it), only when present: a
    source without reports keeps the sample json, and so the plan fingerprint, it always had."""
    for name in ("findings", "impression"):
        text = next((getattr(r, name) for r in records if getattr(r, name)), None)
        if text:
            meta[name] = text


def _image_samples(records: Iterable[Record]) -> list[PlannedSample]:
    return [
        PlannedSample(
            key=sample_key(r.image_id),
            split=str(r.split),
            images=[PlannedImage(r.image_id, r.path, r.view)],
            labels=r.labels,
            meta=_image_meta(r),
        )
        for r in records
    ]


def _study_samples(records: Iterable[Record], max_views: int) -> tuple[list[PlannedSample], int]:
    """Group records into studies, views frontal-first; `max_views` > 0 caps the views kept per study
    (the count left out is returned), 0 keeps every view."""
    studies: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        studies[(str(r.split), r.study_id)].append(r)
    samples, dropped = [], 0
    for (split, study_id), members in studies.items():
        members.sort(key=lambda r: (view_order(r.view), r.image_id))
        kept = members[:max_views] if max_views > 0 else members
        dropped += len(members) - len(kept)
        first = kept[0]
        meta = _image_meta(first)
        del meta["image_id"], meta["view"]
        _add_report(meta, kept)
        meta["indication"] = next((r.indication for r in kept if r.indication), None)
        meta["vitals"] = next((r.vitals for r in kept if r.vitals), {})
        samples.append(
            PlannedSample(
                key=sample_key(study_id),
                split=split,
                images=[PlannedImage(r.image_id, r.path, r.view) for r in kept],
                labels=study_labels(np.stack([r.labels for r in members])),
                meta=meta,
            )
        )
    return samples, dropped


def make_plan(records: list[Record], level: str, max_views: int, seed: int, options: dict[str, object]) -> Plan:
    """Group and order `records` (splits already assigned) and fingerprint the result with `options`.
    At study level `max_views` caps the views stored per study; 0 (the default of `cxrlt shard`) keeps all."""
    if level == "image":
        flat, dropped = _image_samples(records), 0
    else:
        flat, dropped = _study_samples(records, max_views)
    by_split: dict[str, list[PlannedSample]] = {s: [] for s in SPLITS}
    for sample in flat:
        if sample.split not in by_split:
            raise InputError(f"sample {sample.key}: split {sample.split!r} is not one of {SPLITS}")
        by_split[sample.split].append(sample)
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    ordered: dict[str, list[PlannedSample]] = {}
    for split, samples in by_split.items():
        if not samples:
            continue
        samples.sort(key=lambda s: s.key)
        repeated = [k for k, n in Counter(s.key for s in samples).items() if n > 1]
        if repeated:
            raise InputError(f"split {split!r}: {len(repeated)} sample keys repeat, e.g. {repeated[0]!r}")
        order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(samples))
        ordered[split] = [samples[i] for i in order]
        for s in ordered[split]:
            digest.update(s.key.encode())
            digest.update(json.dumps([[i.image_id, i.path] for i in s.images], default=str).encode())
            digest.update(s.labels.tobytes())
            digest.update(json.dumps(s.meta, sort_keys=True, default=str).encode())
    return Plan(level=level, samples=ordered, views_dropped=dropped, fingerprint=digest.hexdigest()[:16])
