"""Shard readers: the training reader (resampled, fixed steps) and the evaluation reader (each sample
once, in a known order). Both are IterableDatasets that yield finished batches (`collate`'s dict,
documented in cxrlt.data.decoding); wrap them with `make_loader`.

Training: each (rank, worker) slot draws shards with replacement from its own share (see
cxrlt.data.partition), shuffles through a buffer, optionally repeats tail-class samples and mixes in
a synthetic and/or an unlabelled shard set, and stops after a fixed number of batches:
`steps_per_epoch` per rank, divided over the workers, so every rank runs the same count and no
collective waits on a rank that ran dry.

Several labelled shard sets (multi-source, cxrlt.data.multisource): the primary set and each extra
`Source` are resampled the same way, each in its own slot share, repeated by the same tail-class
factors (taken from all sets' pooled frequencies, so each set's ratio holds in the mixed stream), and
each sample's set is drawn at the configured ratios; the synthetic and unlabelled sets are mixed into
that stream as before. Every set's labels are mapped onto the run's schema as the tar is read (a
class the set lacks is -1), so repeat factors, batches and skipped samples all see mapped labels.
Without `steps_per_epoch` an epoch is one expected pass over the primary's train split at its share.
Every random choice comes from a seeded generator, so an epoch replays exactly; call `set_epoch`
before each epoch (with non-persistent DataLoader workers, which pick it up when they start). The
sample stream (shard draws, repeats, mixing, shuffle) draws from one generator seeded by (seed, epoch,
rank, worker); each sample's own choices (its augmentation, and the views of a study with more views
than `max_views`: a fresh random subset each time the study is drawn, cxrlt.data.decoding) draw from
a generator seeded by (seed, epoch, rank, worker) and the sample's position k in that worker's stream.
Decoding therefore draws nothing from the stream's generator, which is what lets a resumed epoch skip
samples without decoding them.

Resuming mid-epoch (`set_epoch(epoch, start)`): the reader yields the epoch's batches from `start` on,
equal to an uninterrupted epoch's. Each worker pulls the samples of its batches before `start` out of
the shuffled stream without decoding them; their image members are not even read from the tar (only
headers and json, which the stream needs for repeat factors and damage checks; see
cxrlt.data.tarstream), and those still in the shuffle buffer when the skip ends are read when drawn.
DataLoader worker w then plays the part of the worker that produced batch start + w, since the loader
takes one batch from each worker in turn, worker 0 first. The skip assumes every skipped sample gave
one item: an image that fails to decode inside the skipped part (a damaged shard) shifts the resumed
stream by one sample per such image, and damage counts start again at the resume point.

Damaged shards: training skips a damaged sample (a tar cut short, a missing or broken json member, an
image that does not decode), counts it per shard (`DecodeStats`) and fails with an InputError naming
the count and the shards once the skipped samples pass `max_bad_fraction` of the samples a (rank,
worker) slot read in the epoch (checked at the end of its share of the epoch, and on the way once it
has read as many samples as its share needs, so an all-damaged shard set cannot spin forever).
Evaluation reads strictly: it yields exactly the index's sample count or fails with an InputError
naming the shard and the member (a truncated tar, a broken json, an undecodable image).

Evaluation: each slot reads its share once, in shard order; with `index` on every item the caller
can restore the split's order after gathering. A study with more views than `max_views` yields several
items (view chunks, consecutive, `chunk` = 0, 1, ...) with the same `index`, all in the same slot, so
the caller can merge them before or after gathering.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from webdataset.filters import _shuffle

from cxrlt.data.decoding import LOG, DecodeStats, Item, SampleDecoder, collate, parse_meta
from cxrlt.data.multisource import (
    Source,
    TrainingSet,
    index_schema,
    label_map,
    map_labels,
    primary_share,
    training_counts,
)
from cxrlt.data.partition import Slot, distributed_context, slot_for, worker_context
from cxrlt.data.samplers import class_repeat_factors, mix, repeat_by_factor
from cxrlt.data.shardset import ShardEntry, ShardIndex, read_index
from cxrlt.data.tarstream import tar_samples
from cxrlt.data.transforms import ImageTransform, TransformConfig
from cxrlt.errors import InputError
from cxrlt.labels import Schema

Raw = tuple[dict[str, Any], dict[str, Any], np.ndarray]


@dataclass
class ReaderConfig:
    level: str = "image"
    split: str = "train"
    batch_size: int = 32
    max_views: int = 4
    shuffle_buffer: int = 1000
    seed: int = 0
    steps_per_epoch: int | None = None
    repeat_threshold: float | None = None
    synthetic_ratio: float = 0.0
    unlabelled_ratio: float = 0.0
    max_bad_fraction: float = 0.01
    transform: TransformConfig = field(default_factory=TransformConfig)

    def __post_init__(self) -> None:
        if self.level not in ("image", "study"):
            raise ValueError(f"level must be 'image' or 'study', got {self.level!r}")
        if not 0.0 <= self.max_bad_fraction < 1.0:
            raise InputError(f"max_bad_fraction {self.max_bad_fraction}: give a fraction in [0, 1)")
        if self.batch_size < 1 or self.max_views < 1 or self.shuffle_buffer < 1:
            raise ValueError("batch_size, max_views and shuffle_buffer must be >= 1")


class ShardSplit:
    """The shards of one split of a shard set, with each shard's first position in the split. With a
    `schema` (the run's), samples' labels are read mapped onto its classes (cxrlt.data.multisource)."""

    def __init__(self, directory: str | Path, split: str, schema: Schema | None = None) -> None:
        self.directory = Path(directory)
        self.split = split
        self.index: ShardIndex = read_index(directory)
        self.mapping = None if schema is None else label_map(self.index, schema)
        self.entries: list[ShardEntry] = self.index.shards_for(split)
        self.offsets = np.concatenate([[0], np.cumsum([e.num_samples for e in self.entries])]).astype(np.int64)
        self.num_samples = int(self.offsets[-1])

    def slot_size(self, slot: Slot) -> int:
        return sum(
            slot.kept_below(int(self.offsets[s + 1])) - slot.kept_below(int(self.offsets[s])) for s in slot.shards
        )

    def read(
        self,
        shard: int,
        slot: Slot,
        stats: DecodeStats | None = None,
        strict: bool = False,
        skipping: Callable[[], bool] | None = None,
    ) -> Iterator[Raw]:
        """(raw sample, meta, labels) of `slot`'s samples in one shard, in tar order. Damage (see the
        module docstring) is an InputError with `strict`, else a warning and `stats.skip`. While
        `skipping()` is true, image members are left unread (MemberRef values, cxrlt.data.tarstream)."""
        url = str(self.directory / self.entries[shard].file)
        start, expected = int(self.offsets[shard]), self.entries[shard].num_samples
        stats = stats if stats is not None else DecodeStats()
        count, last = 0, None
        lazy = None if skipping is None else lambda name: not name.endswith(".json") and skipping()
        for count, raw in enumerate(tar_samples(url, strict, lazy), start=1):
            position = start + count - 1
            if count > expected:
                message = f"{url}: sample {raw['__key__']} is past the {expected} samples its _index.json entry lists"
                if strict:
                    raise InputError(message + "; the index does not match the shard")
                LOG.warning("%s; rest of shard skipped", message)
                break
            last = raw["__key__"]
            if not slot.keeps(position):
                continue
            try:
                if "json" not in raw:
                    raise InputError(f"{url}: sample {raw['__key__']} has no json member (damaged shard)")
                meta = parse_meta(raw)
                if self.mapping is not None:
                    if len(meta["_labels"]) != len(self.index.classes):
                        raise InputError(
                            f"{url}: sample {raw['__key__']} has {len(meta['_labels'])} labels, its _index.json "
                            f"lists {len(self.index.classes)} classes (damaged shard)"
                        )
                    meta["_labels"] = meta["labels"] = map_labels(meta["_labels"], self.mapping)
            except InputError as e:
                if strict:
                    raise
                LOG.warning("%s; sample skipped", e)
                stats.skip(url)
                continue
            meta["_index"] = position
            yield raw, meta, meta.pop("_labels")
        if count < expected:
            where = f"after sample {last}" if last else "before its first sample"
            message = f"{url}: {count} of the {expected} samples its _index.json entry lists (the tar ends {where})"
            if strict:
                raise InputError(message + "; the shard is truncated or damaged")
            lost = slot.kept_below(start + expected) - slot.kept_below(start + count)
            LOG.warning("%s; %d samples of this reader's share lost", message, lost)
            if lost:
                stats.skip(url, lost)


# mallopt(3) parameters of glibc's malloc.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _keep_freed_memory() -> None:
    """Make glibc reuse the memory a reader frees. By default it serves large allocations (a 1024 px
    image is 4 MiB as float32) with fresh pages from mmap and hands freed memory back to the kernel, so
    a reader building and dropping batches of such images page-faults about a thousand times per image,
    which cost 15-20 % of the 1024 px training reader's time (#20). Allocations up to 256 MiB then come
    from the heap, and up to 1 GiB of freed memory stays there for reuse: the process keeps its peak
    (a few batches and the shuffle buffer). Not glibc (no libc.so.6): left to its own allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if not libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20):
        # Older glibc refuses thresholds above 32 MiB (HEAP_MAX_SIZE / 2); single images still fit under it.
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def _batches(items: Iterator[Item], batch_size: int) -> Iterator[Item]:
    while batch := list(itertools.islice(items, batch_size)):
        yield collate(batch)


class TrainReader(torch.utils.data.IterableDataset):
    """Infinite-source, fixed-length training batches for this rank (see the module docstring).

    `shards` is the primary set (read from `config.split`); `sources` are extra labelled sets, each drawn
    at its ratio; `schema` is the run's (None: the primary's classes), every set's labels mapped onto it.
    """

    def __init__(
        self,
        shards: str | Path,
        config: ReaderConfig,
        synthetic: str | Path | None = None,
        unlabelled: str | Path | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        sources: Sequence[Source] = (),
        schema: Schema | None = None,
    ) -> None:
        self.config = config
        self.rank, self.world_size = distributed_context(rank, world_size)
        self.real = ShardSplit(shards, config.split, schema)
        self.schema = schema if schema is not None else index_schema(self.real.index)
        # Labelled sets, the primary first, with the share of training samples each gives.
        share = primary_share(sources)
        self.labelled: list[tuple[ShardSplit, float]] = [(self.real, share)]
        self.labelled += [(ShardSplit(s.shards, s.split, self.schema), s.ratio) for s in sources]
        for split, _ in self.labelled:
            if split.num_samples == 0:
                raise InputError(f"{split.directory}: split {split.split!r} has no samples")
        # Extra shard sets mixed into the labelled stream: synthetic tail images, and unlabelled images
        # whose labels the noisy student's teacher fills in. Both are in the primary's classes, so they
        # are mapped as it is.
        self.mixes: list[tuple[ShardSplit, float]] = []
        for extra, ratio, what in (
            (synthetic, config.synthetic_ratio, "synthesise"),
            (unlabelled, config.unlabelled_ratio, "shard"),
        ):
            if extra is not None and ratio > 0:
                split = ShardSplit(extra, config.split, schema)
                if split.index.classes != self.real.index.classes:
                    raise InputError(f"{extra}: its classes differ from {shards}'s; {what} it with the same schema")
                self.mixes.append((split, ratio))
        # round(): 515 / 0.7 / 16 must not become one step more through a last-bit error.
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(
            round(self.real.num_samples / share / (config.batch_size * self.world_size), 9)
        )
        self.factors = None
        if config.repeat_threshold is not None:
            counts = training_counts([TrainingSet(s.index, s.split, r) for s, r in self.labelled], self.schema)
            classes, threshold = self.schema.classes, config.repeat_threshold
            self.factors = class_repeat_factors(counts.by_class(classes), classes, counts.total, threshold)
        self.epoch = 0
        self.start = 0
        self.stats = DecodeStats()
        self._planned = self.steps_per_epoch * config.batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Read epoch `epoch` from its batch `start` on (a resumed run: see the module docstring)."""
        if not 0 <= start <= self.steps_per_epoch:
            raise ValueError(f"start batch {start} is outside the epoch's {self.steps_per_epoch} batches")
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        """Batches one iteration yields: the epoch's from `start` on."""
        return self.steps_per_epoch - self.start

    def _check_damage(self, stats: DecodeStats, worker: int, final: bool) -> None:
        """Fail once skipped samples pass max_bad_fraction of those read (see the module docstring)."""
        limit = self.config.max_bad_fraction
        if stats.bad_samples == 0 or not (final or stats.samples >= self._planned):
            return
        # The shard sets holding the damaged shards (several when training reads several sets).
        where = ", ".join(sorted({str(Path(shard).parent) for shard in stats.bad_by_shard}))
        if stats.bad_samples > limit * stats.samples:
            raise InputError(
                f"{where}: {stats.bad_samples} of {stats.samples} samples read in epoch {self.epoch} "
                f"(rank {self.rank}, worker {worker}) were damaged and skipped, more than max_bad_fraction={limit}; "
                f"damaged shards: {stats.describe_shards()}. Rewrite them with `cxrlt shard`, or raise "
                "data.max_bad_fraction to train on the rest"
            )
        if final:
            LOG.warning(
                "%s: skipped %d of %d samples as damaged in epoch %d (rank %d, worker %d; within "
                "max_bad_fraction=%s): %s",
                where,
                stats.bad_samples,
                stats.samples,
                self.epoch,
                self.rank,
                worker,
                limit,
                stats.describe_shards(),
            )

    def _resampled(
        self,
        split: ShardSplit,
        slot: Slot,
        rng: np.random.Generator,
        stats: DecodeStats,
        worker: int,
        skipping: Callable[[], bool],
    ) -> Iterator[Raw]:
        sizes = np.array([split.entries[s].num_samples for s in slot.shards], dtype=np.float64)
        if split.slot_size(slot) == 0:
            raise InputError(
                f"{split.directory}: slot {slot.index} of {slot.count} (rank x worker) gets no samples; "
                "use fewer ranks/workers or more shards"
            )
        while True:
            shard = slot.shards[rng.choice(len(sizes), p=sizes / sizes.sum())]
            yield from split.read(shard, slot, stats, skipping=skipping)
            self._check_damage(stats, worker, final=False)

    def __iter__(self) -> Iterator[Item]:
        worker, num_workers = worker_context()
        c = self.config
        # The worker whose batches come next in the uninterrupted epoch goes first (module docstring).
        role = (worker + self.start) % num_workers
        planned = self.steps_per_epoch // num_workers + (role < self.steps_per_epoch % num_workers)
        done = self.start // num_workers + (role < self.start % num_workers)
        if planned == done:
            return
        _keep_freed_memory()  # in the process that decodes: a DataLoader worker, or this one
        entropy = [c.seed, self.epoch, self.rank, role]
        rng = np.random.default_rng(entropy)
        self._planned = (planned - done) * c.batch_size
        self.stats = stats = DecodeStats()  # this slot's epoch (from the resume point)
        skipping = True

        def still_skipping() -> bool:
            return skipping

        def resampled(split: ShardSplit) -> Iterator[Raw]:
            slot = slot_for(len(split.entries), self.rank, self.world_size, role, num_workers)
            return self._resampled(split, slot, rng, stats, role, still_skipping)

        def repeated(split: ShardSplit) -> Iterator[Raw]:
            stream = resampled(split)
            if self.factors is not None:  # per set, before mixing: each set's ratio holds after repeats
                stream = repeat_by_factor(stream, lambda sample: sample[2], self.factors, rng)
            return stream

        (primary, _), *sources = self.labelled
        stream = repeated(primary)
        if sources:
            stream = mix(stream, [(repeated(split), ratio) for split, ratio in sources], rng)
        for split, ratio in self.mixes:
            stream = mix(stream, [(resampled(split), ratio)], rng)
        stream = _shuffle(stream, bufsize=c.shuffle_buffer, initial=c.shuffle_buffer, seed=int(rng.integers(2**62)))
        decoder = SampleDecoder(ImageTransform(c.transform, train=True), c.level, c.max_views, stats, views="sample")
        skipped = done * c.batch_size
        for _ in itertools.islice(stream, skipped):  # this worker's samples before `start`: drawn, not decoded
            pass
        skipping = False

        def items() -> Iterator[Item]:
            for k, (raw, meta, _) in enumerate(stream, start=skipped):
                sample_rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(k,)))
                yield from decoder(raw, meta, sample_rng)
                self._check_damage(stats, role, final=False)

        yield from itertools.islice(_batches(items(), c.batch_size), planned - done)
        self._check_damage(stats, role, final=True)


class EvalReader(torch.utils.data.IterableDataset):
    """Every sample of a split exactly once across ranks and workers, each item with its `index`; with a
    `schema` (a multi-source run's), labels mapped onto its classes."""

    def __init__(
        self,
        shards: str | Path,
        config: ReaderConfig,
        rank: int | None = None,
        world_size: int | None = None,
        schema: Schema | None = None,
    ):
        self.config = config
        self.rank, self.world_size = distributed_context(rank, world_size)
        self.split = ShardSplit(shards, config.split, schema)
        self.stats = DecodeStats()

    def num_samples(self, num_workers: int) -> int:
        """Samples this rank will yield with `num_workers` DataLoader workers (to size a gather)."""
        return sum(
            self.split.slot_size(slot_for(len(self.split.entries), self.rank, self.world_size, w, max(1, num_workers)))
            for w in range(max(1, num_workers))
        )

    def __iter__(self) -> Iterator[Item]:
        worker, num_workers = worker_context()
        c = self.config
        slot = slot_for(len(self.split.entries), self.rank, self.world_size, worker, num_workers)
        rng = np.random.default_rng([c.seed, self.rank, worker])
        decoder = SampleDecoder(
            ImageTransform(c.transform, train=False), c.level, c.max_views, self.stats, views="chunks", strict=True
        )
        items = (
            {**item, "index": torch.tensor(meta["_index"])}
            for shard in slot.shards
            for raw, meta, _ in self.split.read(shard, slot, self.stats, strict=True)
            for item in decoder(raw, meta, rng)
        )
        yield from _batches(items, c.batch_size)


class _Loader(torch.utils.data.DataLoader):
    """A DataLoader whose iterator re-raises a worker's InputError with the reader's own one-line
    message (torch's re-raise prepends the worker's traceback)."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return _plain_input_errors(super().__iter__())


def _plain_input_errors(batches: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from batches
    except InputError as e:
        text = str(e)
        marker = "InputError: "
        if text.startswith("Caught InputError") and marker in text:
            raise InputError(text.rsplit(marker, 1)[1].strip()) from None
        raise


def make_loader(reader: torch.utils.data.IterableDataset, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over a reader's ready-made batches (batch_size=None: the reader batches)."""
    return _Loader(reader, batch_size=None, num_workers=num_workers, persistent_workers=False)
