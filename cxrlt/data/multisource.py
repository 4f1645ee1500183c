"""Multi-source training: several labelled shard sets in one run, each sample mapped onto the run's schema.

The CXR-LT 2024 pretraining recipe mixes public sets (NIH, CheXpert, VinDr, BRAX, PadChest) that each
annotate their own classes. A run reads a *primary* shard set (`data.shards`: its dev split validates
the run) and extra `Source`s (`data.sources`), each drawn at its ratio of the training samples; the
primary keeps 1 - sum(ratios). This module owns what the reader and the trainer share about that:
- the run's schema (`run_schema`): the primary's classes, a registered schema, or the union of every
  set's classes in the CXR-LT 2024 spelling (`canonical_name`), the primary's first;
- the label mapping (`label_map`, `map_labels`): a sample's labels go onto the run's classes by
  canonical name (cxrlt.labels.harmonisation_index); a class its set lacks is unknown (-1), never
  negative, and the set's classes outside the run are dropped;
- the class frequencies the loss weights, the repeat factors and the head/medium/tail groups read
  (`training_counts`, see its docstring for how several sets are pooled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlt.data.shardset import ShardIndex, index_path, read_index
from cxrlt.errors import InputError
from cxrlt.labels import SCHEMAS, UNKNOWN, Schema, canonical_name, frequency_groups, harmonisation_index

UNION = "union"


@dataclass
class Source:
    """One extra labelled training shard set (a `[[data.sources]]` table): its folder, the share of
    training samples drawn from it, and the split it is read from."""

    shards: Path
    ratio: float
    split: str = "train"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio) and 0 < self.ratio < 1):
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio!r}")
        if not self.split:
            raise ValueError("split must name a split of the shard set")


def primary_share(sources: Sequence[Source]) -> float:
    """The share of training samples the primary set keeps: 1 - the sources' ratios, which must be > 0."""
    share = 1.0 - sum(s.ratio for s in sources)
    if share <= 1e-9:
        ratios = " + ".join(str(s.ratio) for s in sources)
        raise ValueError(f"data.sources ratios sum to {ratios} >= 1; data.shards must keep a share (1 - sum > 0)")
    return share


def index_schema(index: ShardIndex) -> Schema:
    """A shard set's classes as a Schema, with the alias table of the registered schema of its name (or of
    exactly its classes), else the CXR-LT spelling (a folder+CSV set names its classes itself)."""
    registered = SCHEMAS.get(index.schema) or next(
        (s for s in SCHEMAS.values() if s.classes == tuple(index.classes)), None
    )
    naming = registered.naming if registered is not None else "cxr-lt"
    return Schema(index.schema, tuple(index.classes), f"classes of shard set schema {index.schema!r}", naming=naming)


def valid_schema_choice(choice: str) -> bool:
    """Whether `choice` is a `data.schema` value `run_schema` takes."""
    return choice in ("", UNION) or choice in SCHEMAS


def run_schema(choice: str, indexes: Sequence[ShardIndex]) -> Schema:
    """The run's classes: "" the first (primary) set's, "union" every set's by canonical name in order of
    appearance (primary first), else the registered schema `choice`."""
    if choice == "":
        return index_schema(indexes[0])
    if choice == UNION:
        names: dict[str, None] = {}
        for index in indexes:
            naming = index_schema(index).naming
            names.update((canonical_name(c, naming), None) for c in index.classes)
        return Schema(UNION, tuple(names), "union of the training sets' classes (CXR-LT 2024 spelling)")
    if choice not in SCHEMAS:
        raise InputError(f"data.schema = {choice!r}: give '', {UNION!r} or a registered schema ({', '.join(SCHEMAS)})")
    return SCHEMAS[choice]


def label_map(index: ShardIndex, schema: Schema) -> np.ndarray | None:
    """Per run class, the set's label column holding it (-1: the set lacks it); None when the set's
    classes are the run's, in order (nothing to map)."""
    if tuple(index.classes) == schema.classes:
        return None
    return harmonisation_index(index_schema(index), schema)


def map_labels(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """One sample's labels (in its set's class order) in the run's classes, by `label_map`'s mapping."""
    out = np.full(len(mapping), UNKNOWN, dtype=np.float32)
    present = mapping >= 0
    out[present] = labels[mapping[present]]
    return out


@dataclass(frozen=True)
class TrainingSet:
    """A labelled set as the counts see it: its index, the split read, its share of training samples."""

    index: ShardIndex
    split: str
    share: float


@dataclass(frozen=True)
class TrainingCounts:
    """Per run class, the count the loss weights read (None: no set annotates the class), the total they
    are taken over, and the class's head/medium/tail group (cxrlt.labels.frequency_groups)."""

    positives: list[float | None]
    total: int
    groups: dict[str, str]

    def by_class(self, classes: Sequence[str]) -> dict[str, float]:
        """{class: count} of the classes with one (what samplers.class_repeat_factors reads)."""
        return {c: n for c, n in zip(classes, self.positives) if n is not None}


def training_counts(sets: Sequence[TrainingSet], schema: Schema) -> TrainingCounts:
    """The class frequencies of a run's labelled training stream, as (positives, total) counts.

    One set: its split's positive counts (ShardIndex.positive_counts) over its sample count, mapped onto
    the run's classes: the single-source behaviour, unchanged. Several sets: a class's frequency is its
    positives over the samples that annotate it, each set weighted by how often the stream draws each of
    its samples (share / samples), i.e. the frequency among the class's known labels in the training
    stream (a set that never annotates a class adds neither positives nor negatives to it). It is
    handed on as an effective count, frequency x total, with total = all sets' samples, so weights from
    counts ((total - n) / n, total / n) read the frequency and a class no set annotates has no count.
    """
    if len(sets) == 1:
        (only,) = sets
        mapping = label_map(only.index, schema)
        positives: list[float | None] = list(only.index.positive_counts(only.split))
        split_counts = only.index.split_class_counts.get(only.split, {})
        total = only.index.splits[only.split]
        if mapping is None:
            return TrainingCounts(positives, total, frequency_groups(split_counts, total))
        mapped = [None if m < 0 else positives[m] for m in mapping]
        named = {c: split_counts.get(only.index.classes[m], 0) for c, m in zip(schema.classes, mapping) if m >= 0}
        return TrainingCounts(mapped, total, frequency_groups(named, total))
    total = sum(s.index.splits[s.split] for s in sets)
    positive = np.zeros(len(schema))
    known = np.zeros(len(schema))
    for s in sets:
        samples = s.index.splits[s.split]
        weight = s.share / samples
        known_counts = None if s.index.split_known_counts is None else s.index.split_known_counts.get(s.split, {})
        mapping = label_map(s.index, schema)
        columns = np.arange(len(schema)) if mapping is None else mapping
        counts = s.index.positive_counts(s.split)
        for j, m in enumerate(columns):
            count = counts[m] if m >= 0 else None
            if count is None:  # the set does not annotate this class
                continue
            name = s.index.classes[m]
            positive[j] += weight * count
            known[j] += weight * (samples if known_counts is None else known_counts.get(name, 0))
    effective = [min(total, total * p / k) if k > 0 else None for p, k in zip(positive, known)]
    # frequency_groups counts samples: the effective counts, rounded (a share off by < 0.5 / total).
    named_counts = {c: round(n) for c, n in zip(schema.classes, effective) if n is not None}
    return TrainingCounts(effective, total, frequency_groups(named_counts, total))


@dataclass(frozen=True)
class TrainingSets:
    """The labelled sets a run trains on (the primary first) and the run's schema."""

    schema: Schema
    sets: tuple[TrainingSet, ...]

    def counts(self) -> TrainingCounts:
        return training_counts(self.sets, self.schema)


def open_training_sets(primary: Path, split: str, sources: Sequence[Source], schema: str) -> TrainingSets:
    """Read and check the primary set and every source: an InputError names the `data.sources` entry
    whose folder is no shard set, whose split is empty, or none of whose classes is in the run's schema."""
    share = primary_share(sources)
    sets = [TrainingSet(read_index(primary), split, share)]
    for i, source in enumerate(sources):
        key = f"data.sources[{i}]"
        if not index_path(source.shards).is_file():
            raise InputError(f"{key}.shards = {source.shards}: no shard set there (no _index.json)")
        index = read_index(source.shards)
        if not index.splits.get(source.split):
            raise InputError(
                f"{key}.split = {source.split!r}: {source.shards} has no samples in it (splits: {index.splits})"
            )
        sets.append(TrainingSet(index, source.split, source.ratio))
    run = run_schema(schema, [s.index for s in sets])
    for i, s in enumerate(sets):
        mapping = label_map(s.index, run)
        if mapping is not None and not (mapping >= 0).any():
            where = f"data.shards = {primary}" if i == 0 else f"data.sources[{i - 1}].shards = {sources[i - 1].shards}"
            raise InputError(
                f"{where}: none of the classes of {s.index.schema!r} ({', '.join(s.index.classes[:5])}, ...) is "
                f"in the run's schema {run.name!r}; it would train on unknown labels only"
            )
    return TrainingSets(run, tuple(sets))
