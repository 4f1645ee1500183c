"""One call from a source table to a finished shard set: splits, plan, write (what `cxrlt shard` runs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from cxrlt.data.plan import make_plan
from cxrlt.data.records import SourceTable
from cxrlt.data.shardset import LEVELS, ShardIndex
from cxrlt.data.splits import assign_splits, check_disjoint, parse_fractions
from cxrlt.data.writer import ImageLoader, ShardWriter, WriterOptions
from cxrlt.errors import InputError
from cxrlt.labels import Schema


@dataclass(frozen=True)
class BuildOptions:
    level: str = "image"
    max_views: int = 0  # study level: keep at most this many views per study; 0 keeps every view
    split_by: str = "patient"
    split: str = "0.8,0.1,0.1"
    seed: int = 0


def build_shards(
    table: SourceTable,
    schema: Schema,
    out: str | Path,
    build: BuildOptions,
    writer: WriterOptions,
    loader: ImageLoader | None = None,
    command: list[str] | None = None,
) -> ShardIndex:
    if build.level not in LEVELS:
        raise InputError(f"--level {build.level!r}: expected one of {LEVELS}")
    if build.max_views < 0:
        raise InputError("--max-views must be >= 0 (0 keeps every view of a study)")
    if not table.records:
        raise InputError(f"source {table.name}: no rows to shard in {table.files}")
    assign_splits(table.records, build.split_by, parse_fractions(build.split), build.seed)
    check_disjoint(table.records, f"source {table.name} ({', '.join(map(str, table.files))})")
    options = {
        "schema": schema.name,
        "classes": list(schema.classes),
        **asdict(build),
        "max_size": writer.max_size,
        "image_format": writer.image_format,
        "samples_per_shard": writer.samples_per_shard,
    }
    plan = make_plan(table.records, build.level, build.max_views, build.seed, options)
    return ShardWriter(out, schema, writer, loader).write(plan, [table.describe()], command)
