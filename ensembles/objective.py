"""What an ensemble search maximises: mAP, group-average mAP, tail mAP, optionally minus a mECE penalty.

`Objective` is built once per label matrix and called hundreds of thousands of times (greedy selection
scores every candidate at every step, in every fold of every trial). Why not call
cxrlt.metrics.class_metrics each time: it re-derives the positive/negative masks, converts to float64
and computes F1/FNR/ECE too. Here the per-class positive and negative row numbers are computed once; an
evaluation gathers each class's positives and negatives straight from the (N, C) array (no transposed
copy), sorts both in their own dtype (float32 sorts take half the time of float64), and counts, for each
positive, the positives and negatives scoring at or above it with two binary searches. Sorting all the
negatives is cheaper than first dropping those below the lowest positive: with realistic members that
drop keeps 80-99% of them and costs a pass of its own. AP is the same formula (sklearn's, ties as one
threshold); tests/ensembles/test_objective.py checks equality with class_metrics and sklearn.
When the mix asks for mECE, class_metrics is used as is.
Every call to `per_class_ap` is one objective evaluation; `evaluations` counts them, shared by an
objective and the fold subsets made from it, so a search can report how much work a trial took.
`map` runs independent evaluations (a greedy step's candidates, the members' scores) on `threads`
threads: the sorts and gathers release the GIL, and the results come back in order, the same as one
thread's, so a search stays reproducible.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Literal, TypeVar

import numpy as np

from cxrlt.metrics import class_metrics

ObjectiveKind = Literal["map", "group_map", "tail_map"]
T = TypeVar("T")
R = TypeVar("R")


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    # One pool per size and process: a Ray worker reused across trials keeps its threads.
    return ThreadPoolExecutor(threads, thread_name_prefix="objective")


@dataclass(frozen=True)
class ObjectiveSpec:
    kind: ObjectiveKind = "map"
    ece_weight: float = 0.0  # score = base - ece_weight * mECE

    def __post_init__(self) -> None:
        if self.kind not in ("map", "group_map", "tail_map"):
            raise ValueError(f"objective kind must be map, group_map or tail_map, not {self.kind!r}")
        if self.ece_weight < 0:
            raise ValueError("ece_weight must be >= 0")


class Objective:
    """Scores (N, C) probabilities against fixed labels in {1, 0, -1}; higher is better."""

    def __init__(
        self,
        labels: np.ndarray,
        spec: ObjectiveSpec,
        classes: tuple[str, ...],
        groups: Mapping[str, str],
        threads: int = 1,
    ):
        labels = np.asarray(labels)
        self.labels = labels
        self.spec = spec
        self.classes = tuple(classes)
        self.groups = dict(groups)
        self._pos = [np.flatnonzero(col == 1) for col in labels.T]
        self._neg = [np.flatnonzero(col == 0) for col in labels.T]
        self.valid = np.array([p.size > 0 and n.size > 0 for p, n in zip(self._pos, self._neg)])
        self.threads = threads
        self._calls = [0]  # one cell, shared with the subset()s
        self._lock = threading.Lock()
        if not self.valid.any():
            raise ValueError("no class has both known positives and known negatives")
        self._weights = self._class_weights(spec.kind, classes, groups)

    def _class_weights(self, kind: str, classes: tuple[str, ...], groups: Mapping[str, str]) -> np.ndarray:
        """Weights over classes whose weighted sum of AP is the base score (0 on undefined classes)."""
        group_of = np.array([groups.get(c, "") for c in classes])
        if kind == "map":
            weights = self.valid.astype(np.float64)
        elif kind == "tail_map":
            weights = (self.valid & (group_of == "tail")).astype(np.float64)
        else:
            weights = np.zeros(len(classes))
            present = [g for g in ("head", "medium", "tail") if (self.valid & (group_of == g)).any()]
            for g in present:
                members = self.valid & (group_of == g)
                weights[members] = 1.0 / (members.sum() * len(present))
        if weights.sum() == 0:
            raise ValueError(f"objective {kind!r} has no class with labels of both kinds in its group(s)")
        return weights / weights.sum()

    @property
    def evaluations(self) -> int:
        """Calls of `per_class_ap` so far, on this objective and every subset made from it."""
        return self._calls[0]

    def per_class_ap(self, probs: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """AP per class (NaN where undefined), equal to average_precision_score. With `classes` (indices),
        only those are computed and the others are NaN: a per-class search skips classes it is done with."""
        with self._lock:
            self._calls[0] += 1
        probs = np.asarray(probs)
        out = np.full(probs.shape[1], np.nan)
        wanted = self.valid if classes is None else self.valid & np.isin(np.arange(self.valid.size), classes)
        for j in np.flatnonzero(wanted):
            column = probs[:, j]
            pos = np.sort(column[self._pos[j]])
            neg = np.sort(column[self._neg[j]])
            neg_at_or_above = neg.size - np.searchsorted(neg, pos, side="left")
            pos_at_or_above = pos.size - np.searchsorted(pos, pos, side="left")
            out[j] = np.mean(pos_at_or_above / (pos_at_or_above + neg_at_or_above))
        return out

    def __call__(self, probs: np.ndarray, calibrated: np.ndarray | None = None) -> float:
        """The score of `probs`. `calibrated`, when given, is where the mECE term is measured instead: the
        build scores a recipe's ranking and its cross-fitted calibration separately."""
        ap = self.per_class_ap(probs)
        score = float(np.dot(self._weights, np.nan_to_num(ap)))
        if self.spec.ece_weight:
            ece = class_metrics(self.labels, np.clip(probs if calibrated is None else calibrated, 0, 1)).ece
            score -= self.spec.ece_weight * float(np.nanmean(ece[self.valid]))
        return score

    def map(self, work: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """[work(item) for item in items], on `threads` threads when there are several."""
        if self.threads <= 1:
            return [work(item) for item in items]
        return list(_pool(self.threads).map(work, items))

    def subset(self, rows: np.ndarray) -> Objective:
        """The same objective on a subset of rows (a training fold); it adds to this one's `evaluations`."""
        part = Objective(self.labels[rows], self.spec, self.classes, self.groups, self.threads)
        part._calls, part._lock = self._calls, self._lock
        return part
