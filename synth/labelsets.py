"""Which classes to synthesise and with which label sets, from the real train split's labels.

Target classes are the rare ones by the index's train counts (or a configured list). A synthetic image
of a target class should carry what real images of that class carry alongside it (Hernia with
Atelectasis and Effusion, as the real data has them), so each label set is the full label row of a real
train image that is positive for the target, drawn uniformly: a draw from the real joint label
distribution conditioned on the target class, unknowns included. Labels are read from the shards' json
members only; no image is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlt.data.partition import slot_for
from cxrlt.data.readers import ShardSplit
from cxrlt.errors import InputError
from synth.config import SampleConfig

SPLIT = "train"


def train_labels(shards: str | Path) -> np.ndarray:
    """(N, K) float32 label rows of the shard set's train split, in shard order."""
    split = ShardSplit(shards, SPLIT)
    everything = slot_for(len(split.entries), 0, 1, 0, 1)
    rows = [labels for shard in range(len(split.entries)) for _, _, labels in split.read(shard, everything)]
    if not rows:
        raise InputError(f"{shards}: the {SPLIT} split has no samples to draw label sets from")
    return np.stack(rows)


def target_classes(classes: list[str], labels: np.ndarray, cfg: SampleConfig) -> list[str]:
    """`cfg.classes` (checked against the shard set) or the classes below `cfg.tail_threshold`."""
    positives = (labels == 1).sum(axis=0)
    if cfg.classes:
        unknown = [c for c in cfg.classes if c not in classes]
        if unknown:
            raise InputError(f"sample.classes: {unknown} not in the shard set's classes {classes}")
        empty = [c for c in cfg.classes if positives[classes.index(c)] == 0]
        if empty:
            raise InputError(f"sample.classes: {empty} have no positive train image to draw label sets from")
        return list(cfg.classes)
    share = positives / len(labels)
    return [c for c, n, s in zip(classes, positives, share) if n > 0 and s < cfg.tail_threshold]


@dataclass(frozen=True)
class LabelSets:
    """`count` label rows for one target class, and the real train row each was copied from."""

    target: str
    rows: np.ndarray
    sources: np.ndarray


def draw_label_sets(labels: np.ndarray, classes: list[str], target: str, count: int, seed: int) -> LabelSets:
    """Uniform draws (with replacement) among the real train rows positive for `target`; the generator
    is seeded by (seed, class position), so one class's sets do not depend on which others are drawn."""
    k = classes.index(target)
    candidates = np.flatnonzero(labels[:, k] == 1)
    picked = np.random.default_rng([seed, k]).choice(candidates, size=count, replace=True)
    return LabelSets(target, labels[picked].copy(), picked)
