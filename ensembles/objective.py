"""What an ensemble search maximises: mAP, group-average mAP, tail mAP, optionally minus a mECE penalty.

`Objective` is built once per label matrix and called thousands of times (greedy selection scores
every candidate at every step). Why not call cxrlt.metrics.class_metrics each time: it re-derives the
positive/negative masks, converts to float64 and computes F1/FNR/ECE too; with the labels fixed, the
per-class positive rows and negative masks are computed once here, negatives below the lowest positive
are dropped before sorting, and only the two value sorts per class remain: about 4x faster than
class_metrics at 80,000 x 40 (0.037 s against 0.139 s measured before the negative pruning). AP is the same formula
(sklearn's, ties as one threshold); tests/ensembles/test_objective.py checks equality with class_metrics.
When the mix asks for mECE, class_metrics is used as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cxrlt.metrics import class_metrics

ObjectiveKind = Literal["map", "group_map", "tail_map"]


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

    def __init__(self, labels: np.ndarray, spec: ObjectiveSpec, classes: tuple[str, ...], groups: Mapping[str, str]):
        labels = np.asarray(labels)
        self.labels = labels
        self.spec = spec
        self.classes = tuple(classes)
        self.groups = dict(groups)
        self._pos = [np.flatnonzero(col == 1) for col in labels.T]
        self._neg = [col == 0 for col in labels.T]  # boolean masks: combined with a threshold below
        self.valid = np.array([p.size > 0 and n.any() for p, n in zip(self._pos, self._neg)])
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

    def per_class_ap(self, probs: np.ndarray) -> np.ndarray:
        """AP per class (NaN where undefined), equal to average_precision_score."""
        columns = np.ascontiguousarray(np.asarray(probs).T)
        out = np.full(columns.shape[0], np.nan)
        for j, (col, pos_rows, neg_mask) in enumerate(zip(columns, self._pos, self._neg)):
            if not self.valid[j]:
                continue
            pos = np.sort(col[pos_rows])
            # Negatives below the lowest positive never enter AP; dropping them before the sort (the
            # dominant cost) is exact and shrinks it by the fraction of easy negatives.
            neg = np.sort(col[neg_mask & (col >= pos[0])])
            neg_at_or_above = neg.size - np.searchsorted(neg, pos, side="left")
            pos_at_or_above = pos.size - np.searchsorted(pos, pos, side="left")
            out[j] = np.mean(pos_at_or_above / (pos_at_or_above + neg_at_or_above))
        return out

    def __call__(self, probs: np.ndarray) -> float:
        ap = self.per_class_ap(probs)
        score = float(np.dot(self._weights, np.nan_to_num(ap)))
        if self.spec.ece_weight:
            ece = class_metrics(self.labels, np.clip(probs, 0, 1)).ece
            score -= self.spec.ece_weight * float(np.nanmean(ece[self.valid]))
        return score

    def subset(self, rows: np.ndarray) -> Objective:
        """The same objective on a subset of rows (a training fold)."""
        return Objective(self.labels[rows], self.spec, self.classes, self.groups)
