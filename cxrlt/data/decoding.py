"""Raw shard samples -> model-ready items, and items -> batches (the batch contract with the trainer).

Image items (image reader), one per stored image (a study-level set gives one item per view):
    image (C, H, W) float32 normalised | labels (K,) float32, 1 / 0 / -1 unknown | id (image id)
    study_id, patient_id (str) | view_type () int64 (index in VIEW_TYPES) | synthetic () bool
    findings, impression (str, the study report's sections; "" when the shards hold none)
Study items (study reader; an image-level set reads as one-view studies):
    images (V, C, H, W) float32, zero past the last view | view_mask (V,) bool | view_type (V,) int64,
    0 = padding | image_ids list[str] | indication str ("" when absent) | has_indication () bool |
    vitals (len(VITALS),) float32, raw units, 0 where absent | vitals_mask (len(VITALS),) bool |
    age () float32 | has_age () bool | sex () int64 (index in SEXES) | labels | id (study id) |
    study_id | patient_id | synthetic
Evaluation items add index () int64: the sample's position in the split (shard order, then tar order).
`collate` stacks tensors along a new batch dimension and keeps strings and lists as lists.

A stored study may hold more views than the model's `max_views` slots (shards keep every view unless
capped). Training (`views="sample"`) then draws a random subset of `max_views` views from the reader's
seeded generator each time the study is drawn, kept in stored (frontal-first) order, as CaMChex does.
Evaluation (`views="chunks"`) scores every view: a study of n > max_views decodable views becomes
ceil(n / max_views) consecutive chunks of as-equal-as-possible size (`view_chunks`), one study item each,
with the same id and index and `chunk` () int64 = the chunk's position (every evaluation study item has
it, 0 for an unsplit study); the caller merges a sample's chunks (trainers.inference).

A stored image that fails to decode: in training (`strict=False`) it is logged and counted
(`DecodeStats`), and its view or sample is dropped; the training reader fails once the skipped samples
pass its `max_bad_fraction` (cxrlt.data.readers). In evaluation (`strict=True`) it is an InputError
naming the shard and the member: an evaluation split is read whole or not at all.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlt.data.images import ImageProblem, open_gray
from cxrlt.data.shardset import SEXES, VIEW_TYPES, VITALS
from cxrlt.data.tarstream import MemberRef
from cxrlt.data.transforms import ImageTransform
from cxrlt.errors import InputError

LOG = logging.getLogger("cxrlt.data")
Item = dict[str, Any]


@dataclass
class DecodeStats:
    """Per-process counts: stored images that could not be decoded (`bad_images`), raw samples read
    (`samples`) and samples skipped as damaged (`bad_samples`: no usable image, no or broken json, or
    lost to a truncated tar), with the skipped samples per shard file (`bad_by_shard`)."""

    bad_images: int = 0
    samples: int = 0
    bad_samples: int = 0
    bad_by_shard: dict[str, int] = field(default_factory=dict)

    def report(self, key: str, member: str, problem: ImageProblem) -> None:
        self.bad_images += 1
        LOG.warning("skipping %s/%s: %s (%d bad images so far in this reader)", key, member, problem, self.bad_images)

    def skip(self, shard: str, count: int = 1) -> None:
        """`count` samples of `shard` were skipped (also counted as read: they were due in the stream)."""
        self.samples += count
        self.bad_samples += count
        self.bad_by_shard[shard] = self.bad_by_shard.get(shard, 0) + count

    def describe_shards(self, limit: int = 5) -> str:
        worst = sorted(self.bad_by_shard.items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{Path(shard).name} ({n})" for shard, n in worst[:limit])
        return text + (f" and {len(worst) - limit} more" if len(worst) > limit else "")


def parse_meta(raw: dict[str, Any]) -> dict[str, Any]:
    """The sample's json member, checked enough to decode it; a broken one is an InputError naming
    the shard and the member."""
    where = f"{raw.get('__url__', '?')}: member {raw['__key__']}.json"
    try:
        meta = json.loads(raw["json"])
        if not isinstance(meta, dict):
            raise ValueError(f"expected an object, got {type(meta).__name__}")
        meta["_labels"] = np.asarray(meta["labels"], dtype=np.float32)
        if meta["_labels"].ndim != 1:
            raise ValueError("labels is not a flat list")
    except KeyError as e:
        raise InputError(f"{where}: no {e.args[0]!r} field (damaged shard)") from None
    except (ValueError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{where}: not valid sample json ({e}); the shard is damaged") from None
    return meta


def _members(raw: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(tar member, image id, view) per stored image of a raw sample, in stored order."""
    if "views" in meta:
        names = [f"{k}.img.jpg" if f"{k}.img.jpg" in raw else f"{k}.img.png" for k in range(len(meta["views"]))]
        return list(zip(names, meta["image_ids"], meta["views"]))
    name = "img.jpg" if "img.jpg" in raw else "img.png"
    return [(name, meta["image_id"], meta["view"])]


def _member_bytes(value: bytes | MemberRef) -> bytes:
    """A member's bytes, reading one the tar reader left unread (a sample skipped past on resume)."""
    if isinstance(value, MemberRef):
        try:
            return value.read()
        except OSError as e:
            raise ImageProblem("unreadable", str(e)) from None
    return value


def view_chunks(n: int, max_views: int) -> list[tuple[int, int]]:
    """(start, stop) of ceil(n / max_views) consecutive chunks covering n views, sizes differing by at
    most one, larger first: 5 views in 4 slots -> 3 + 2, 6 -> 3 + 3, 11 -> 4 + 4 + 3."""
    count = max(1, math.ceil(n / max_views))
    base, extra = divmod(n, count)
    bounds = np.cumsum([0] + [base + (k < extra) for k in range(count)])
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


class SampleDecoder:
    """Turns a raw sample (tar members + parsed json) into image items, or study items: one for
    training (`views="sample"`: a random subset when the study has more than max_views views), one
    per chunk of views for evaluation (`views="chunks"`, see the module docstring). `strict`: a bad
    image is an InputError naming shard and member instead of a dropped view or sample."""

    def __init__(
        self,
        transform: ImageTransform,
        level: str,
        max_views: int,
        stats: DecodeStats,
        views: str = "chunks",
        strict: bool = False,
    ) -> None:
        if level not in ("image", "study"):
            raise ValueError(f"level must be 'image' or 'study', got {level!r}")
        if views not in ("sample", "chunks"):
            raise ValueError(f"views must be 'sample' or 'chunks', got {views!r}")
        self.transform = transform
        self.level = level
        self.max_views = max_views
        self.stats = stats
        self.views = views
        self.strict = strict

    def _chosen_members(
        self, raw: dict[str, Any], meta: dict[str, Any], rng: np.random.Generator
    ) -> list[tuple[str, str, str]]:
        members = _members(raw, meta)
        if self.level == "study" and self.views == "sample" and len(members) > self.max_views:
            # Chosen before decoding, so the views left out this time are never decoded.
            keep = np.sort(rng.choice(len(members), size=self.max_views, replace=False))
            members = [members[i] for i in keep]
        return members

    def __call__(self, raw: dict[str, Any], meta: dict[str, Any], rng: np.random.Generator) -> Iterator[Item]:
        views = []
        for member, image_id, view in self._chosen_members(raw, meta, rng):
            try:
                if member not in raw:
                    raise ImageProblem("missing", "member absent from the shard (damaged tar)")
                image = open_gray(_member_bytes(raw[member]), self.transform.decode_size)
            except ImageProblem as problem:
                if self.strict:
                    raise InputError(
                        f"{raw.get('__url__', '?')}: member {raw['__key__']}.{member}: {problem} (damaged shard)"
                    ) from None
                self.stats.report(raw["__key__"], member, problem)
                continue
            views.append((self.transform(image, rng), image_id, VIEW_TYPES.index(view)))
        if not views:
            self.stats.skip(raw.get("__url__", "?"))
            return
        self.stats.samples += 1
        common = {
            "labels": torch.tensor(meta["labels"], dtype=torch.float32),
            "study_id": str(meta["study_id"]),
            "patient_id": str(meta["patient_id"]),
            "synthetic": torch.tensor(bool(meta.get("synthetic", False))),
            "findings": meta.get("findings") or "",
            "impression": meta.get("impression") or "",
        }
        if self.level == "image":
            for tensor, image_id, view_type in views:
                yield {"image": tensor, "id": image_id, "view_type": torch.tensor(view_type), **common}
            return
        if self.views == "sample":
            yield {**self._study_fields(views, meta), "id": raw["__key__"], **common}
            return
        for chunk, (start, stop) in enumerate(view_chunks(len(views), self.max_views)):
            fields = self._study_fields(views[start:stop], meta)
            yield {**fields, "id": raw["__key__"], "chunk": torch.tensor(chunk), **common}

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
        key: torch.stack([it[key] for it in items])
        if isinstance(items[0][key], torch.Tensor)
        else [it[key] for it in items]
        for key in items[0]
    }
