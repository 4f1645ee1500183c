"""Combiners: functions from member probabilities (M, N, C) to ensemble probabilities (N, C).

Each combiner is a dataclass: its hyperparameters are fields a search sets, its fitted state (weights,
coefficients) fields `fit` fills, and `state()` / `from_state()` turn both into the plain JSON a recipe
stores, so `apply` reproduces the fitted ensemble without refitting. `member_weights()` gives the
(M, C) weight matrix the report draws as a heat-map.

mean_prob, mean_logit, rank_average: no fitting. weighted: softmax(temperature * standardised member
AP on the fitting rows), global or per class, in probability or logit space. per_class_select: per
class, the mean of the top-k members by AP. greedy: Caruana et al. (2004) forward selection with
replacement, optionally over random member bags, weights = selection counts. stacking: per class a
logistic regression on member logits (sklearn).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from scipy.special import expit, logit, softmax
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression

from ensembles.objective import Objective

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before logits, so 0 and 1 stay finite


def member_logits(probs: np.ndarray) -> np.ndarray:
    return logit(np.clip(probs, EPS, 1 - EPS))


def weighted_mean(probs: np.ndarray, weights: np.ndarray, space: str = "prob") -> np.ndarray:
    """sum_m weights[m, c] * probs[m, :, c] (weights (M, C), columns summing to 1), member by member
    so no (M, N, C) temporary is made."""
    out = np.zeros(probs.shape[1:], dtype=np.float64)
    for m in np.flatnonzero(weights.any(axis=1)):
        values = probs[m] if space == "prob" else member_logits(probs[m])
        out += weights[m] * values
    return (out if space == "prob" else expit(out)).astype(np.float32)


@dataclass
class Combiner:
    name: ClassVar[str]

    def fit(self, probs: np.ndarray, objective: Objective) -> Combiner:
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        return np.full((n_members, n_classes), 1.0 / n_members)

    def state(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Combiner:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(state) - set(known)
        if unknown:
            raise ValueError(f"combiner {cls.name!r} has no setting(s) {sorted(unknown)}")
        return cls(**{k: np.asarray(v) if isinstance(v, list) else v for k, v in state.items()})


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


@dataclass
class MeanProb(Combiner):
    name: ClassVar[str] = "mean_prob"

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return probs.mean(axis=0, dtype=np.float64).astype(np.float32)


@dataclass
class MeanLogit(Combiner):
    name: ClassVar[str] = "mean_logit"

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return weighted_mean(probs, np.full((probs.shape[0], probs.shape[2]), 1.0 / probs.shape[0]), "logit")


@dataclass
class RankAverage(Combiner):
    """Mean of each member's normalised rank within the predicted set: in (0, 1], not calibrated."""

    name: ClassVar[str] = "rank_average"

    def predict(self, probs: np.ndarray) -> np.ndarray:
        out = np.zeros(probs.shape[1:], dtype=np.float64)
        for member in probs:
            out += rankdata(member, axis=0) / member.shape[0]
        return (out / probs.shape[0]).astype(np.float32)


@dataclass
class Weighted(Combiner):
    name: ClassVar[str] = "weighted"
    scope: Literal["global", "per_class"] = "global"
    temperature: float = 1.0
    space: Literal["prob", "logit"] = "prob"
    weights: np.ndarray | None = None  # (M, C)

    def fit(self, probs: np.ndarray, objective: Objective) -> Weighted:
        n_members, _, n_classes = probs.shape
        if self.scope == "global":
            scores = np.array([objective(m) for m in probs])[:, None].repeat(n_classes, axis=1)
        else:
            scores = np.stack([objective.per_class_ap(m) for m in probs])
        spread = np.nanstd(scores, axis=0)
        z = (scores - np.nanmean(scores, axis=0)) / np.where(spread > 0, spread, 1.0)
        self.weights = softmax(self.temperature * np.nan_to_num(z), axis=0)
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return weighted_mean(probs, self.weights, self.space)

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        return self.weights


@dataclass
class PerClassSelect(Combiner):
    name: ClassVar[str] = "per_class_select"
    top_k: int = 1
    weights: np.ndarray | None = None

    def fit(self, probs: np.ndarray, objective: Objective) -> PerClassSelect:
        ap = np.stack([objective.per_class_ap(m) for m in probs])
        k = min(self.top_k, probs.shape[0])
        best = np.argsort(-np.nan_to_num(ap, nan=-1.0), axis=0, kind="stable")[:k]
        self.weights = np.zeros(ap.shape)
        np.put_along_axis(self.weights, best, 1.0 / k, axis=0)
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return weighted_mean(probs, self.weights)

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        return self.weights


@dataclass
class Greedy(Combiner):
    """Caruana forward selection with replacement: start from the `init` best members, then repeatedly
    add whichever member (again, possibly) most improves the objective of the running mean; keep the
    best prefix. With `bags` > 1 each bag draws `bag_fraction` of the members, and the weights are the
    selection counts summed over bags (Caruana's remedy for overfitting the selection set)."""

    name: ClassVar[str] = "greedy"
    iterations: int = 20
    init: int = 1
    bags: int = 1
    bag_fraction: float = 0.5
    seed: int = 0
    counts: np.ndarray | None = None  # (M,) selection counts
    progress: Any = field(default=None, repr=False, compare=False)  # optional callable(step, score)

    def fit(self, probs: np.ndarray, objective: Objective) -> Greedy:
        n_members = probs.shape[0]
        rng = np.random.default_rng(self.seed)
        counts = np.zeros(n_members, dtype=np.int64)
        singles = np.array([objective(m) for m in probs])
        for _ in range(self.bags):
            pool = np.arange(n_members)
            if self.bags > 1:
                size = max(1, round(self.bag_fraction * n_members))
                pool = np.sort(rng.choice(n_members, size=size, replace=False))
            counts += self._select(probs, objective, pool, singles)
        self.counts = counts
        return self

    def _select(self, probs: np.ndarray, objective: Objective, pool: np.ndarray, singles: np.ndarray) -> np.ndarray:
        counts = np.zeros(probs.shape[0], dtype=np.int64)
        start = pool[np.argsort(-singles[pool], kind="stable")[: max(1, self.init)]]
        counts[start] += 1
        total = probs[start].sum(axis=0, dtype=np.float32)
        best_score, best_counts = objective(total / counts.sum()), counts.copy()
        for step in range(self.iterations):
            n = counts.sum() + 1
            scores = [objective((total + probs[m]) / n) for m in pool]
            pick = pool[int(np.argmax(scores))]
            counts[pick] += 1
            total += probs[pick]
            if max(scores) > best_score:
                best_score, best_counts = max(scores), counts.copy()
            if self.progress is not None:
                self.progress(step, max(scores))
        return best_counts

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return weighted_mean(probs, self.member_weights(probs.shape[0], probs.shape[2]))

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        return np.repeat((self.counts / self.counts.sum())[:, None], n_classes, axis=1)

    def state(self) -> dict[str, Any]:
        return {k: v for k, v in super().state().items() if k != "progress"}


@dataclass
class Stacking(Combiner):
    """Per class, LogisticRegression(C) on the members' logits for that class, fitted on known labels.
    A class whose fitting rows lack one label kind falls back to the member mean (coef all equal)."""

    name: ClassVar[str] = "stacking"
    C: float = 1.0
    coef: np.ndarray | None = None  # (C, M)
    intercept: np.ndarray | None = None  # (C,)

    def fit(self, probs: np.ndarray, objective: Objective) -> Stacking:
        n_members, _, n_classes = probs.shape
        self.coef = np.full((n_classes, n_members), 1.0 / n_members)
        self.intercept = np.zeros(n_classes)
        for c in range(n_classes):
            labels = objective.labels[:, c]
            known = labels != -1
            if len(np.unique(labels[known])) < 2:
                continue
            features = member_logits(probs[:, known, c].T)
            model = LogisticRegression(C=self.C, max_iter=500).fit(features, labels[known])
            self.coef[c], self.intercept[c] = model.coef_[0], model.intercept_[0]
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        out = np.empty(probs.shape[1:], dtype=np.float32)
        for c in range(probs.shape[2]):
            out[:, c] = expit(member_logits(probs[:, :, c].T) @ self.coef[c] + self.intercept[c])
        return out

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        magnitude = np.abs(self.coef.T)
        return magnitude / np.maximum(magnitude.sum(axis=0, keepdims=True), 1e-12)


COMBINERS: dict[str, type[Combiner]] = {
    c.name: c for c in (MeanProb, MeanLogit, RankAverage, Weighted, PerClassSelect, Greedy, Stacking)
}


def make_combiner(name: str, params: dict[str, Any] | None = None) -> Combiner:
    try:
        cls = COMBINERS[name]
    except KeyError:
        raise ValueError(f"unknown combiner {name!r}; known: {', '.join(COMBINERS)}") from None
    return cls.from_state(dict(params or {}))
