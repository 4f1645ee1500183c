"""Stream-level samplers for the training reader: class-aware repeat factors and mixing shard sets.

Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019) gives class c the factor
r_c = max(1, sqrt(t / f_c)), f_c being the share of training samples positive for c; a sample is
repeated r = max over its positive classes (1 with none), as floor(r) copies plus one more with
probability r - floor(r). On a stream this oversamples tail-class images without an index of the
dataset, which webdataset shards do not give cheaply. With several labelled shard sets the share f_c
is the class's frequency among its known labels (cxrlt.data.multisource.training_counts).

Mixing draws each item's stream from the reader's generator: one uniform draw per item, so an epoch
replays exactly, and the same draws whether or not the items are decoded (a resumed epoch skips).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def class_repeat_factors(
    class_counts: Mapping[str, float], classes: Sequence[str], num_samples: int, threshold: float
) -> np.ndarray:
    """r_c per class (schema order); classes never positive get 1 (nothing to repeat)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"repeat threshold must be in (0, 1], got {threshold}")
    share = np.array([class_counts.get(c, 0) for c in classes], dtype=np.float64) / max(num_samples, 1)
    with np.errstate(divide="ignore"):
        factors = np.sqrt(threshold / share)
    return np.where(share > 0, np.maximum(1.0, factors), 1.0)


def sample_repeats(labels: np.ndarray, factors: np.ndarray, rng: np.random.Generator) -> int:
    positive = labels == 1.0
    r = float(factors[positive].max()) if positive.any() else 1.0
    whole = math.floor(r)
    return whole + int(rng.random() < r - whole)


def repeat_by_factor(
    samples: Iterator[T], labels_of: Callable[[T], np.ndarray], factors: np.ndarray, rng: np.random.Generator
) -> Iterator[T]:
    for item in samples:
        for _ in range(sample_repeats(labels_of(item), factors, rng)):
            yield item


def mix(base: Iterator[T], extras: Sequence[tuple[Iterator[T], float]], rng: np.random.Generator) -> Iterator[T]:
    """Each item comes from extras[i] with probability ratio_i, else from `base`; ends when the chosen
    stream ends. The ratios are positive and sum to less than 1 (the base keeps the rest)."""
    ratios = [ratio for _, ratio in extras]
    if any(r <= 0 for r in ratios) or sum(ratios) >= 1:
        raise ValueError(f"mixing ratios must be > 0 and sum to less than 1, got {ratios}")
    bounds = np.cumsum(ratios)
    streams = [stream for stream, _ in extras] + [base]
    while True:
        # searchsorted(side="right"): u < bounds[0] picks extras[0], as the one-extra mix always did.
        source = streams[int(np.searchsorted(bounds, rng.random(), side="right"))]
        try:
            yield next(source)
        except StopIteration:
            return
