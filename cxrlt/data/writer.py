"""The shard writer: a plan of samples -> `{split}-%06d.tar` shards + `_index.json`, resumable.

Pixels are decoded and re-encoded in a process pool (`workers`); results come back in plan order and
the parent writes each shard with webdataset's TarWriter (mtime fixed, so equal input gives
byte-identical shards) through `atomic_path`, so a killed run leaves either a complete shard or none.
After each shard a small record of it (`.progress/<shard>.json`: sample count, skipped images, positive
and known-label counts, plan fingerprint) is written; a rerun with the same plan keeps every shard that has one and
writes only the rest, then assembles `_index.json` from the records.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from cxrlt import __version__
from cxrlt.atomic import atomic_path, write_text_atomic
from cxrlt.data.images import FileLoader, ImageProblem, decode_gray, encode
from cxrlt.data.plan import Plan, PlannedSample
from cxrlt.data.shardset import IMAGE_FORMATS, LEVELS, ShardEntry, ShardIndex, write_index
from cxrlt.errors import InputError
from cxrlt.labels import Schema

PROGRESS_DIR = ".progress"
ImageLoader = Callable[[str, str | None], bytes]


@dataclass(frozen=True)
class WriterOptions:
    max_size: int = 512
    image_format: str = "jpg"
    samples_per_shard: int = 1000
    workers: int = 1

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise InputError(f"--format {self.image_format!r}: expected one of {IMAGE_FORMATS}")
        if self.max_size < 8 or self.samples_per_shard < 1 or self.workers < 1:
            raise InputError("--max-size must be >= 8, --shard-size and --workers >= 1")


@dataclass
class EncodedSample:
    key: str
    images: list[bytes | None]
    problems: list[dict[str, str]]


def encode_sample(sample: PlannedSample, loader: ImageLoader, max_size: int, image_format: str) -> EncodedSample:
    """Decode, shrink and re-encode every image of a sample; bad images become `problems`, not errors."""
    images: list[bytes | None] = []
    problems = []
    for image in sample.images:
        try:
            images.append(encode(decode_gray(loader(image.image_id, image.path), max_size), image_format))
        except ImageProblem as p:
            images.append(None)
            problems.append({"id": image.image_id, "path": str(image.path), "reason": p.reason, "detail": p.detail})
    return EncodedSample(sample.key, images, problems)


def _tar_entries(sample: PlannedSample, encoded: EncodedSample, level: str, image_format: str) -> dict | None:
    """The tar members of a sample, or None when none of its images survived."""
    kept = [(planned, data) for planned, data in zip(sample.images, encoded.images) if data is not None]
    if not kept:
        return None
    meta = {**sample.meta, "labels": sample.labels.tolist()}
    entries: dict[str, object] = {"__key__": sample.key}
    if level == "image":
        entries[f"img.{image_format}"] = kept[0][1]
    else:
        meta["image_ids"] = [planned.image_id for planned, _ in kept]
        meta["views"] = [planned.view for planned, _ in kept]
        for k, (_, data) in enumerate(kept):
            entries[f"{k}.img.{image_format}"] = data
    entries["json"] = json.dumps(meta, sort_keys=True).encode()
    return entries


class ShardWriter:
    """Writes one plan into `out`, resuming from what a previous run with the same plan finished."""

    def __init__(self, out: str | Path, schema: Schema, options: WriterOptions, loader: ImageLoader | None = None):
        self.out = Path(out)
        self.schema = schema
        self.options = options
        self.loader = loader or FileLoader()

    def _record_path(self, shard: str) -> Path:
        return self.out / PROGRESS_DIR / f"{shard}.json"

    def _finished(self, shard: str, fingerprint: str) -> dict | None:
        record_path = self._record_path(shard)
        if not (self.out / shard).is_file() or not record_path.is_file():
            return None
        record = json.loads(record_path.read_text(encoding="utf-8"))
        # A record of an older cxrlt lacks the known-label counts the index needs: write that shard again.
        return record if record.get("plan_hash") == fingerprint and "known" in record else None

    def _check_foreign(self, fingerprint: str) -> None:
        """Refuse to mix two different runs' shards in one folder."""
        progress = self.out / PROGRESS_DIR
        for record_path in sorted(progress.glob("*.json")) if progress.is_dir() else []:
            found = json.loads(record_path.read_text(encoding="utf-8")).get("plan_hash")
            if found != fingerprint:
                raise InputError(
                    f"{self.out}: holds shards of a different input or options ({record_path.name} has plan "
                    f"{found}, this run is {fingerprint}); use a new --out or delete the folder"
                )

    def _clear_partials(self) -> None:
        """Remove temporaries of shards a killed run was writing (atomic_path names them .<name>.*.tmp)."""
        for stale in self.out.glob(".*.tar.*.tmp"):
            stale.unlink()

    def write(self, plan: Plan, sources: list[dict], command: list[str] | None = None) -> ShardIndex:
        if plan.level not in LEVELS:
            raise InputError(f"--level {plan.level!r}: expected one of {LEVELS}")
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_foreign(plan.fingerprint)
        self._clear_partials()
        size = self.options.samples_per_shard
        shards = [
            (f"{split}-{i // size:06d}.tar", split, samples[i : i + size])
            for split, samples in plan.samples.items()
            for i in range(0, len(samples), size)
        ]
        records = {name: self._finished(name, plan.fingerprint) for name, _, _ in shards}
        pending = [(name, split, chunk) for name, split, chunk in shards if records[name] is None]
        total_images = sum(len(s.images) for _, _, chunk in shards for s in chunk)
        todo_images = sum(len(s.images) for _, _, chunk in pending for s in chunk)
        with tqdm(total=total_images, initial=total_images - todo_images, unit="img", desc="shard") as bar:
            encoded = self._encode_all(chunk for _, _, chunk in pending)
            for name, split, chunk in pending:
                records[name] = self._write_shard(name, split, chunk, encoded, plan)
                bar.update(sum(len(s.images) for s in chunk))
        index = self._index(shards, records, plan, sources, command or [])
        if index.num_samples == 0:
            self._refuse_empty(shards, index.skipped)
        write_index(self.out, index)
        return index

    def _refuse_empty(self, shards: list, skipped: list[dict[str, str]]) -> None:
        """No sample survived: remove the empty shards (a rerun with the images fixed starts clean) and
        refuse, with the skip reasons, instead of leaving a shard set that every reader would reject."""
        for name, _, _ in shards:
            (self.out / name).unlink(missing_ok=True)
            self._record_path(name).unlink(missing_ok=True)
        for folder in (self.out / PROGRESS_DIR, self.out):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        reasons: dict[str, int] = {}
        for problem in skipped:
            reasons[problem["reason"]] = reasons.get(problem["reason"], 0) + 1
        summary = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items(), key=lambda r: -r[1]))
        example = f"; e.g. {skipped[0]['id']} ({skipped[0]['path']}): {skipped[0]['detail']}" if skipped else ""
        raise InputError(
            f"{self.out}: no sample was written, every image was skipped ({summary or 'no images'}){example}; "
            "check --images and the source table"
        )

    def _encode_all(self, chunks: Iterator[list[PlannedSample]]) -> Iterator[EncodedSample]:
        work = functools.partial(
            encode_sample, loader=self.loader, max_size=self.options.max_size, image_format=self.options.image_format
        )
        samples = (sample for chunk in chunks for sample in chunk)
        if self.options.workers == 1:
            yield from map(work, samples)
            return
        with multiprocessing.get_context("fork").Pool(self.options.workers) as pool:
            yield from pool.imap(work, samples, chunksize=8)

    def _write_shard(
        self, name: str, split: str, chunk: list[PlannedSample], encoded: Iterator[EncodedSample], plan: Plan
    ) -> dict:
        positives = np.zeros(len(self.schema), dtype=np.int64)
        known = np.zeros(len(self.schema), dtype=np.int64)
        skipped: list[dict[str, str]] = []
        written = 0
        # An int mtime: a float one makes tarfile add a pax header to every member, which costs the
        # readers about a tenth of their throughput in header parsing.
        with (
            atomic_path(self.out / name) as tmp,
            open(tmp, "wb") as stream,
            wds.TarWriter(stream, encoder=False, mtime=0) as tar,
        ):
            for sample in chunk:
                result = next(encoded)
                skipped.extend(result.problems)
                entries = _tar_entries(sample, result, plan.level, self.options.image_format)
                if entries is None:
                    continue
                tar.write(entries)
                positives += sample.labels == 1.0
                known += sample.labels >= 0
                written += 1
        record = {
            "plan_hash": plan.fingerprint,
            "split": split,
            "num_samples": written,
            "skipped": skipped,
            "positives": positives.tolist(),
            "known": known.tolist(),
        }
        write_text_atomic(self._record_path(name), json.dumps(record, sort_keys=True))
        return record

    def _index(self, shards: list, records: dict, plan: Plan, sources: list[dict], command: list[str]) -> ShardIndex:
        entries = [ShardEntry(name, split, records[name]["num_samples"]) for name, split, _ in shards]
        splits: dict[str, int] = {}
        split_positives: dict[str, np.ndarray] = {}
        split_known: dict[str, np.ndarray] = {}
        skipped: list[dict[str, str]] = []
        for name, split, _ in shards:
            record = records[name]
            splits[split] = splits.get(split, 0) + record["num_samples"]
            split_positives[split] = split_positives.get(split, 0) + np.asarray(record["positives"])
            split_known[split] = split_known.get(split, 0) + np.asarray(record["known"])
            skipped.extend(record["skipped"])
        classes = list(self.schema.classes)
        total = sum(split_positives.values(), np.zeros(len(classes), dtype=np.int64))
        return ShardIndex(
            schema=self.schema.name,
            classes=classes,
            level=plan.level,
            num_samples=sum(splits.values()),
            shards=entries,
            splits=splits,
            class_counts=dict(zip(classes, map(int, total))),
            split_class_counts={s: dict(zip(classes, map(int, p))) for s, p in split_positives.items()},
            split_known_counts={s: dict(zip(classes, map(int, k))) for s, k in split_known.items()},
            sources=sources,
            skipped=skipped,
            num_skipped=len(skipped),
            image_format=self.options.image_format,
            max_size=self.options.max_size,
            plan_hash=plan.fingerprint,
            views_dropped=plan.views_dropped,
            created_by={"tool": f"cxrlt {__version__}", "command": command},
        )
