"""View aggregation: image predictions -> one prediction per study -> copied back to every image.

CXR-LT labels are study-level, and the submission wants a row per image; teams pooled the views of a
study before scoring. Methods:
  none      keep per-image predictions
  mean      mean over the study's images
  max       max over the study's images
  frontal   weighted mean, frontal views (PA/AP) weighted `frontal_weight`, lateral/unknown views 1
  learned   per class, alpha * max + (1 - alpha) * mean, alpha from a grid chosen by AP on the fitting
            rows (study-level labels are the same on every image, so image rows score studies)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from ensembles.objective import Objective

FRONTAL = frozenset({"PA", "AP", "POSTERO_ANTERIOR", "ANTERO_POSTERIOR", "PA LLD", "AP AXIAL"})
ALPHAS = np.linspace(0.0, 1.0, 5)
ViewMethod = Literal["none", "mean", "max", "frontal", "learned"]
METHODS: tuple[ViewMethod, ...] = ("none", "mean", "max", "frontal", "learned")


def as_view_method(name: str) -> ViewMethod:
    """`name` as a ViewMethod, refused with the known methods listed when it is not one."""
    for method in METHODS:
        if name == method:
            return method
    raise ValueError(f"unknown view method {name!r}; known: {list(METHODS)}")


@dataclass(frozen=True)
class Studies:
    """Rows grouped by study: `order` sorts rows by study, `starts` marks each study's first sorted row."""

    codes: np.ndarray  # study number (0..S-1) of each row
    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, study_ids: np.ndarray) -> Studies:
        codes, _ = pd.factorize(np.asarray(study_ids))
        order = np.argsort(codes, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
        return cls(codes=codes, order=order, starts=starts)

    def subset(self, rows: np.ndarray) -> Studies:
        return Studies.of(self.codes[rows])

    def reduce(self, ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        """(n_studies, C) ufunc-reduction over each study's rows, studies numbered by `codes`."""
        return ufunc.reduceat(values[self.order], self.starts, axis=0)

    def broadcast(self, per_study: np.ndarray) -> np.ndarray:
        """Each row gets its study's value (factorize numbers studies 0..S-1, the order reduce returns)."""
        return per_study[self.codes]


def _weighted_study_mean(probs: np.ndarray, weights: np.ndarray, studies: Studies) -> np.ndarray:
    total = studies.reduce(np.add, probs.astype(np.float64) * weights[:, None])
    return total / studies.reduce(np.add, weights.astype(np.float64))[:, None]


@dataclass
class ViewAggregator:
    method: ViewMethod = "mean"
    frontal_weight: float = 2.0
    alpha: np.ndarray | None = None  # (C,), for "learned"

    def _mean_and_max(self, probs: np.ndarray, studies: Studies) -> tuple[np.ndarray, np.ndarray]:
        mean = _weighted_study_mean(probs, np.ones(len(probs)), studies)
        return mean, studies.reduce(np.maximum, probs)

    def fit(self, probs: np.ndarray, studies: Studies, views: np.ndarray, objective: Objective) -> ViewAggregator:
        if self.method != "learned":
            return self
        mean, high = (studies.broadcast(a) for a in self._mean_and_max(probs, studies))
        ap = np.stack([objective.per_class_ap(a * high + (1 - a) * mean) for a in ALPHAS])
        self.alpha = ALPHAS[np.argmax(np.nan_to_num(ap, nan=-1.0), axis=0)]
        return self

    def predict(self, probs: np.ndarray, studies: Studies, views: np.ndarray) -> np.ndarray:
        if self.method == "none":
            return probs
        if self.method == "max":
            per_study = studies.reduce(np.maximum, probs)
        elif self.method == "frontal":
            weights = np.where(np.isin(views, list(FRONTAL)), self.frontal_weight, 1.0)
            per_study = _weighted_study_mean(probs, weights, studies)
        elif self.method == "mean":
            per_study = _weighted_study_mean(probs, np.ones(len(probs)), studies)
        else:
            if self.alpha is None:
                raise RuntimeError('view method "learned" has no alpha: fit it, or load it from a state that has one')
            mean, high = self._mean_and_max(probs, studies)
            per_study = self.alpha * high + (1 - self.alpha) * mean
        return studies.broadcast(per_study).astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ViewAggregator:
        alpha = state.get("alpha")
        return cls(**{**state, "alpha": None if alpha is None else np.asarray(alpha)})


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value
