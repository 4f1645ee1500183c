"""Stream-level samplers for the training reader: class-aware repeat factors and synthetic mixing.

Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019) gives class c the factor
r_c = max(1, sqrt(t / f_c)), f_c being the share of training samples positive for c; a sample is
repeated r = max over its positive classes (1 with none), as floor(r) copies plus one more with
probability r - floor(r). On a stream this oversamples tail-class images without an index of the
dataset, which webdataset shards do not give cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def class_repeat_factors(
    class_counts: Mapping[str, int], classes: Sequence[str], num_samples: int, threshold: float
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


def mix(real: Iterator[T], synthetic: Iterator[T], ratio: float, rng: np.random.Generator) -> Iterator[T]:
    """Each item comes from `synthetic` with probability `ratio`; ends when either stream ends."""
    if not 0 <= ratio < 1:
        raise ValueError(f"synthetic ratio must be in [0, 1), got {ratio}")
    while True:
        source = synthetic if rng.random() < ratio else real
        try:
            yield next(source)
        except StopIteration:
            return
