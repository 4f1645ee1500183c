"""Kept candidates -> a synthetic shard set the trainer mixes in (`TrainReader(synthetic=...)`).

The set has the real set's schema and classes and one split, `train` (the split the trainer reads), and
is written by cxrlt's own shard writer, so it obeys the shard contract. Each sample's json is the real
image-level json with `synthetic: true`, `source: "synthetic"` and a `provenance` object: generating
model and step, seed, target class, label set, guidance, DDIM steps and eta, and the filter's
classifier, threshold and score.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from cxrlt.data.plan import Plan, PlannedImage, PlannedSample
from cxrlt.data.shardset import ShardIndex
from cxrlt.data.writer import ShardWriter, WriterOptions
from cxrlt.errors import InputError
from cxrlt.labels import Schema
from synth.config import FilterConfig
from synth.generate import Candidate, image_path
from synth.labelsets import SPLIT


def provenance(candidate: Candidate, filter_cfg: FilterConfig) -> dict[str, Any]:
    return {
        "model": candidate.model,
        "model_step": candidate.model_step,
        "seed": candidate.seed,
        "target": candidate.target,
        "label_set": candidate.positives,
        "source_row": candidate.source_row,
        "guidance": candidate.guidance,
        "ddim_steps": candidate.ddim_steps,
        "eta": candidate.eta,
        "filter": {
            "classifier": None if filter_cfg.classifier is None else str(filter_cfg.classifier),
            "threshold": filter_cfg.threshold if filter_cfg.classifier is not None else None,
            "score": candidate.filter_score,
        },
    }


def _sample(candidate: Candidate, out: Path, filter_cfg: FilterConfig) -> PlannedSample:
    meta: dict[str, object] = {
        "image_id": candidate.key,
        "study_id": candidate.key,
        "patient_id": candidate.key,
        "view": "UNKNOWN",
        "age": None,
        "sex": None,
        "split": SPLIT,
        "source": "synthetic",
        "synthetic": True,
        "provenance": provenance(candidate, filter_cfg),
    }
    return PlannedSample(
        key=candidate.key,
        split=SPLIT,
        images=[PlannedImage(candidate.key, str(image_path(out, candidate)), "UNKNOWN")],
        labels=np.asarray(candidate.labels, dtype=np.float32),
        meta=meta,
    )


def write_synthetic_shards(
    candidates: list[Candidate],
    out: Path,
    real: ShardIndex,
    filter_cfg: FilterConfig,
    image_size: int,
    samples_per_shard: int,
    command: list[str],
) -> ShardIndex:
    """Write the kept candidates as `train` shards + `_index.json` into `out`."""
    kept = [c for c in candidates if c.kept]
    if not kept:
        raise InputError(f"{out}: no candidate reached filter.threshold {filter_cfg.threshold}; nothing to write")
    samples = [_sample(c, out, filter_cfg) for c in kept]
    digest = hashlib.sha256(json.dumps([s.meta for s in samples], sort_keys=True).encode())
    plan = Plan(level="image", samples={SPLIT: samples}, views_dropped=0, fingerprint=digest.hexdigest()[:16])
    schema = Schema(name=real.schema, classes=tuple(real.classes), description="synthetic set of the real set's schema")
    writer = ShardWriter(
        out, schema, WriterOptions(max_size=image_size, image_format="png", samples_per_shard=samples_per_shard)
    )
    models = sorted({c.model for c in kept})
    return writer.write(plan, sources=[{"name": "synthetic", "models": models, "records": len(kept)}], command=command)
