"""A tiny study-level shard set with studies of more views than a study model's 4 slots (real MIMIC-CXR
studies have up to 11 images), shared by the reader and the inference tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.records import Record, SourceTable
from cxrlt.data.shardset import ShardIndex
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import NIH_14

# Views per study, in each of train and dev; the view names are given out of frontal-first order.
VIEW_COUNTS = (6, 2, 1, 5, 3)
_VIEWS = ("LATERAL", "PA", "LL", "AP", "UNKNOWN", "OTHER")


def study_id(split: str, study: int) -> str:
    return f"{split}{study}-v{VIEW_COUNTS[study]}"


def multiview_table() -> SourceTable:
    rng = np.random.default_rng(3)
    records = []
    for split in ("train", "dev"):
        for s, count in enumerate(VIEW_COUNTS):
            labels = (rng.random(len(NIH_14.classes)) < 0.3).astype(np.float32)
            for v in range(count):
                records.append(
                    Record(
                        f"{split}{s}-img{v}",
                        study_id(split, s),
                        f"p{split}{s}",
                        "multiview",
                        labels,
                        view=_VIEWS[v],
                        split=split,
                        sex="F",
                        age=60.0,
                    )
                )
    return SourceTable("multiview", records, [])


def _png(image_id: str, path: str | None) -> bytes:
    rng = np.random.default_rng(sum(map(ord, image_id)))
    pixels = np.linspace(0, 200, 40)[None, :] + rng.normal(0, 20, (36, 40))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def build_multiview_shards(out: Path, max_views: int = 0, samples_per_shard: int = 2) -> ShardIndex:
    """The studies above at study level, every view kept unless `max_views` caps them."""
    options = BuildOptions(level="study", max_views=max_views, split_by="none")
    return build_shards(
        multiview_table(),
        NIH_14,
        out,
        options,
        WriterOptions(max_size=32, samples_per_shard=samples_per_shard),
        loader=_png,
    )
