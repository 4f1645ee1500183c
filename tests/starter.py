"""Shard sets of the embedded NIH starter images for tests: any schema, size and number of images."""

from __future__ import annotations

from pathlib import Path

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.sources.starter import read_starter
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import Schema


def shard_starter(out: Path, schema: Schema, max_size: int, samples_per_shard: int, images: int | None = None) -> Path:
    """The first `images` starter images (all: None) with their NIH labels mapped onto `schema`, sharded."""
    table = read_starter(schema)
    table.records = table.records[:images]
    build_shards(
        table, schema, out, BuildOptions(), WriterOptions(max_size=max_size, samples_per_shard=samples_per_shard)
    )
    return out
