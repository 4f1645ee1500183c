"""Raw shard samples -> model-ready items, and items -> batches (the batch contract with the trainer).

Image items (image reader), one per stored image (a study-level set gives one item per view):
    image (C, H, W) float32 normalised | labels (K,) float32, 1 / 0 / -1 unknown | id (image id)
    study_id, patient_id (str) | view_type () int64 (index in VIEW_TYPES) | synthetic () bool
Study items (study reader; an image-level set reads as one-view studies):
    images (V, C, H, W) float32, zero past the last view | view_mask (V,) bool | view_type (V,) int64,
    0 = padding | image_ids list[str] | indication str ("" when absent) | has_indication () bool |
    vitals (len(VITALS),) float32, raw units, 0 where absent | vitals_mask (len(VITALS),) bool |
    age () float32 | has_age () bool | sex () int64 (index in SEXES) | labels | id (study id) |
    study_id | patient_id | synthetic
Evaluation items add index () int64: the sample's position in the split (shard order, then tar order).
`collate` stacks tensors along a new batch dimension and keeps strings and lists as lists.

A stored image that fails to decode is logged and counted (`DecodeStats`), and its view or sample is
dropped; it never stops the reader.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cxrlt.data.images import ImageProblem, open_gray
from cxrlt.data.shardset import SEXES, VIEW_TYPES, VITALS
from cxrlt.data.transforms import ImageTransform

LOG = logging.getLogger("cxrlt.data")
Item = dict[str, Any]


@dataclass
class DecodeStats:
    """Per-process count of stored images that could not be decoded."""

    bad_images: int = 0

    def report(self, key: str, member: str, problem: ImageProblem) -> None:
        self.bad_images += 1
        LOG.warning("skipping %s/%s: %s (%d bad images so far in this reader)", key, member, problem, self.bad_images)


def parse_meta(raw: dict[str, Any]) -> dict[str, Any]:
    return json.loads(raw["json"])


def _members(raw: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(tar member, image id, view) per stored image of a raw sample, in stored order."""
    if "views" in meta:
        names = [f"{k}.img.jpg" if f"{k}.img.jpg" in raw else f"{k}.img.png" for k in range(len(meta["views"]))]
        return list(zip(names, meta["image_ids"], meta["views"]))
    name = "img.jpg" if "img.jpg" in raw else "img.png"
    return [(name, meta["image_id"], meta["view"])]


class SampleDecoder:
    """Turns a raw sample (tar members + parsed json) into image items or one study item."""

    def __init__(self, transform: ImageTransform, level: str, max_views: int, stats: DecodeStats) -> None:
        if level not in ("image", "study"):
            raise ValueError(f"level must be 'image' or 'study', got {level!r}")
        self.transform = transform
        self.level = level
        self.max_views = max_views
        self.stats = stats

    def __call__(self, raw: dict[str, Any], meta: dict[str, Any], rng: np.random.Generator) -> Iterator[Item]:
        views = []
        for member, image_id, view in _members(raw, meta)[: self.max_views if self.level == "study" else None]:
            try:
                if member not in raw:
                    raise ImageProblem("missing", "member absent from the shard (damaged tar)")
                image = open_gray(raw[member], self.transform.config.size)
            except ImageProblem as problem:
                self.stats.report(raw["__key__"], member, problem)
                continue
            views.append((self.transform(image, rng), image_id, VIEW_TYPES.index(view)))
        if not views:
            return
        common = {
            "labels": torch.tensor(meta["labels"], dtype=torch.float32),
            "study_id": str(meta["study_id"]),
            "patient_id": str(meta["patient_id"]),
            "synthetic": torch.tensor(bool(meta.get("synthetic", False))),
        }
        if self.level == "image":
            for tensor, image_id, view_type in views:
                yield {"image": tensor, "id": image_id, "view_type": torch.tensor(view_type), **common}
            return
        yield {**self._study_fields(views, meta), "id": raw["__key__"], **common}

    def _study_fields(self, views: list[tuple[torch.Tensor, str, int]], meta: dict[str, Any]) -> Item:
        n = len(views)
        first = views[0][0]
        images = first.new_zeros((self.max_views, *first.shape))
        images[:n] = torch.stack([v[0] for v in views])
        view_type = torch.zeros(self.max_views, dtype=torch.int64)
        view_type[:n] = torch.tensor([v[2] for v in views])
        vitals_in = meta.get("vitals") or {}
        indication = meta.get("indication") or ""
        age = meta.get("age")
        return {
            "images": images,
            "view_mask": torch.arange(self.max_views) < n,
            "view_type": view_type,
            "image_ids": [v[1] for v in views] + [""] * (self.max_views - n),
            "indication": indication,
            "has_indication": torch.tensor(bool(indication)),
            "vitals": torch.tensor([float(vitals_in.get(name, 0.0)) for name in VITALS], dtype=torch.float32),
            "vitals_mask": torch.tensor([name in vitals_in for name in VITALS]),
            "age": torch.tensor(0.0 if age is None else float(age), dtype=torch.float32),
            "has_age": torch.tensor(age is not None),
            "sex": torch.tensor(SEXES.index(meta["sex"]) if meta.get("sex") in SEXES else 0),
        }


def collate(items: list[Item]) -> Item:
    """Stack tensors on a new first dimension; keep everything else as a list."""
    return {
        key: torch.stack([it[key] for it in items]) if isinstance(items[0][key], torch.Tensor) else [it[key] for it in items]
        for key in items[0]
    }
