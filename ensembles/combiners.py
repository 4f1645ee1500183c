"""Combiners: functions from member probabilities (M, N, C) to ensemble probabilities (N, C).

Each combiner is a dataclass: its hyperparameters are fields a search sets, its fitted state (weights,
coefficients) fields `fit` fills, and `state()` / `from_state()` turn both into the plain JSON a recipe
stores, so `apply` reproduces the fitted ensemble without refitting. `member_weights()` gives the
(M, C) weight matrix the report draws as a heat-map. `average()` merges one setting fitted on each
cross-validation fold into the single combiner a recipe stores (weights and coefficients averaged,
greedy counts summed), so the recipe applies the combiners whose out-of-fold outputs the build scored and
calibrated, not a refit on all rows whose outputs nothing was fitted on (issue #16 item 6).

mean_prob, mean_logit, rank_average: no fitting. weighted: softmax(temperature * standardised member
AP on the fitting rows), global or per class, in probability or logit space. per_class_select: per
class, the mean of the top-k members by AP. greedy: Caruana et al. (2004) forward selection with
replacement, optionally over random member bags or per class, weights = selection counts. stacking: per class a
logistic regression on member logits (sklearn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

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


def _fitted(value: np.ndarray | None, combiner: str, field: str) -> np.ndarray:
    """`value`, a fitted-state field, which must have been set by `fit` or `from_state` before use."""
    if value is None:
        raise RuntimeError(f"combiner {combiner!r} has no {field}: fit it, or load it from a state that has them")
    return value


@dataclass
class Combiner:
    name: ClassVar[str]

    def fit(self, probs: np.ndarray, objective: Objective) -> Combiner:
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        return np.full((n_members, n_classes), 1.0 / n_members)

    @classmethod
    def average(cls, fitted: Sequence[Self]) -> Self:
        """One combiner standing for `fitted`, these settings fitted on each fold's training rows: the
        combiner a recipe stores. Parameter-free combiners are the same on every fold."""
        return fitted[0]

    def state(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
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
        n_classes = probs.shape[2]
        if self.scope == "global":
            scores = np.array(objective.map(objective, probs))[:, None].repeat(n_classes, axis=1)
        else:
            scores = np.stack(objective.map(objective.per_class_ap, probs))
        spread = np.nanstd(scores, axis=0)
        z = (scores - np.nanmean(scores, axis=0)) / np.where(spread > 0, spread, 1.0)
        self.weights = softmax(self.temperature * np.nan_to_num(z), axis=0)
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return weighted_mean(probs, _fitted(self.weights, self.name, "weights"), self.space)

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        return _fitted(self.weights, self.name, "weights")

    @classmethod
    def average(cls, fitted: Sequence[Self]) -> Self:
        weights = [_fitted(f.weights, cls.name, "weights") for f in fitted]
        return dataclasses.replace(fitted[0], weights=np.mean(weights, axis=0))


@dataclass
class PerClassSelect(Combiner):
    name: ClassVar[str] = "per_class_select"
    top_k: int = 1
    weights: np.ndarray | None = None

    def fit(self, probs: np.ndarray, objective: Objective) -> PerClassSelect:
        ap = np.stack(objective.map(objective.per_class_ap, probs))
        k = min(self.top_k, probs.shape[0])
        best = np.argsort(-np.nan_to_num(ap, nan=-1.0), axis=0, kind="stable")[:k]
        weights = np.zeros(ap.shape)
        np.put_along_axis(weights, best, 1.0 / k, axis=0)
        self.weights = weights
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return weighted_mean(probs, _fitted(self.weights, self.name, "weights"))

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        return _fitted(self.weights, self.name, "weights")

    @classmethod
    def average(cls, fitted: Sequence[Self]) -> Self:
        weights = [_fitted(f.weights, cls.name, "weights") for f in fitted]
        return dataclasses.replace(fitted[0], weights=np.mean(weights, axis=0))


@dataclass
class Greedy(Combiner):
    """Caruana forward selection with replacement: start from the `init` best members, then repeatedly
    add whichever member (again, possibly) most improves the objective of the running mean; keep the
    best prefix. With `bags` > 1 each bag draws `bag_fraction` of the members, and the weights are the
    selection counts summed over bags (Caruana's remedy for overfitting the selection set).

    Selection stops after `patience` additions in a row that do not beat the best prefix, or after
    `iterations` additions: the best prefix of 40 members is usually reached within a few dozen steps,
    and the steps after it only cost time (the issue #17 build spent 10 minutes on 162-step bags).
    scope "per_class" runs the selection for each class on its own AP (Caruana per class): one candidate
    evaluation gives every class's AP, so it costs what the global selection costs; each class keeps its
    own best prefix and patience, and classes that are done are no longer scored. It ignores the
    objective's class weights and mECE term, which do not decide a single class's ranking.
    space "logit" averages the members' logits, as mean_logit does, instead of their probabilities; a
    candidate is scored on its mean logit directly when only ranks count (AP is the same under expit)."""

    name: ClassVar[str] = "greedy"
    iterations: int = 20
    init: int = 1
    bags: int = 1
    bag_fraction: float = 0.5
    patience: int = 10
    scope: Literal["global", "per_class"] = "global"
    space: Literal["prob", "logit"] = "prob"
    seed: int = 0
    counts: np.ndarray | None = None  # (M,) selection counts, (M, C) for scope "per_class"

    def fit(self, probs: np.ndarray, objective: Objective) -> Greedy:
        n_members, _, n_classes = probs.shape
        rng = np.random.default_rng(self.seed)
        per_class = self.scope == "per_class"
        counts = np.zeros((n_members, n_classes) if per_class else n_members, dtype=np.int64)
        if per_class:
            singles = np.nan_to_num(np.stack(objective.map(objective.per_class_ap, probs)), nan=-1.0)
        else:
            singles = np.array(objective.map(objective, probs))
        values = probs if self.space == "prob" else member_logits(probs)
        for _ in range(self.bags):
            pool = np.arange(n_members)
            if self.bags > 1:
                size = max(1, round(self.bag_fraction * n_members))
                pool = np.sort(rng.choice(n_members, size=size, replace=False))
            select = self._select_per_class if per_class else self._select
            counts += select(values, objective, pool, singles)
        self.counts = counts
        return self

    def _score(self, summed: np.ndarray, n: int, objective: Objective) -> float:
        """The objective of the running mean summed / n of `values` (probabilities, or logits for space
        "logit"). AP ignores a positive scale and the expit, so unless the objective has an mECE term the
        float32 sum itself is scored: a pass fewer, and no float64 mean (a float32 array divided by
        numpy's integer count is float64, whose sorts take twice as long)."""
        if not objective.spec.ece_weight:
            return objective(summed)
        mean = summed / np.float32(n)
        return objective(expit(mean) if self.space == "logit" else mean)

    def _select(self, values: np.ndarray, objective: Objective, pool: np.ndarray, singles: np.ndarray) -> np.ndarray:
        counts = np.zeros(values.shape[0], dtype=np.int64)
        start = pool[np.argsort(-singles[pool], kind="stable")[: max(1, self.init)]]
        counts[start] += 1
        total = values[start].sum(axis=0, dtype=np.float32)
        best_score, best_counts = self._score(total, counts.sum(), objective), counts.copy()
        stale = 0
        for _ in range(self.iterations):
            n = counts.sum() + 1

            def candidate(m: int, n: int = n, total: np.ndarray = total) -> float:
                return self._score(total + values[m], n, objective)

            scores = objective.map(candidate, pool)
            pick = int(np.argmax(scores))
            counts[pool[pick]] += 1
            total += values[pool[pick]]
            stale += 1
            if scores[pick] > best_score:
                best_score, best_counts, stale = scores[pick], counts.copy(), 0
            if stale >= self.patience:
                break
        return best_counts

    def _select_per_class(
        self, values: np.ndarray, objective: Objective, pool: np.ndarray, singles: np.ndarray
    ) -> np.ndarray:
        n_members, _, n_classes = values.shape
        classes = np.arange(n_classes)
        counts = np.zeros((n_members, n_classes), dtype=np.int64)
        start = pool[np.argsort(-singles[pool], axis=0, kind="stable")[: max(1, self.init)]]  # (init, C)
        total = np.zeros(values.shape[1:], dtype=np.float32)
        for row in start:
            counts[row, classes] += 1
            total += values[row, :, classes].T
        best_score = objective.per_class_ap(total)
        best_counts = counts.copy()
        stale = np.zeros(n_classes, dtype=np.int64)
        active = objective.valid.copy()  # classes without AP have nothing to select by
        for _ in range(self.iterations):
            todo = np.flatnonzero(active)
            if todo.size == 0:
                break

            def candidate_aps(m: int, todo: np.ndarray = todo) -> np.ndarray:
                return objective.per_class_ap(total + values[m], todo)

            # Per class AP ignores a positive scale, so the running sums need no division by the counts.
            scores = np.stack(objective.map(candidate_aps, pool))
            scores = scores[:, todo]
            pick = pool[np.argmax(scores, axis=0)]
            counts[pick, todo] += 1
            total[:, todo] += values[pick, :, todo].T
            better = scores.max(axis=0) > best_score[todo]
            stale[todo] = np.where(better, 0, stale[todo] + 1)
            best_score[todo[better]] = scores.max(axis=0)[better]
            best_counts[:, todo[better]] = counts[:, todo[better]]
            active[todo[stale[todo] >= self.patience]] = False
        return best_counts

    def predict(self, probs: np.ndarray) -> np.ndarray:
        return weighted_mean(probs, self.member_weights(probs.shape[0], probs.shape[2]), self.space)

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        selected = _fitted(self.counts, self.name, "counts")
        counts = selected if selected.ndim == 2 else np.repeat(selected[:, None], n_classes, axis=1)
        return counts / counts.sum(axis=0, keepdims=True)

    @classmethod
    def average(cls, fitted: Sequence[Self]) -> Self:
        # Counts summed over the folds, as over bags: the folds' selections vote like bags do.
        counts = [_fitted(f.counts, cls.name, "counts") for f in fitted]
        return dataclasses.replace(fitted[0], counts=np.sum(counts, axis=0))


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
        coef = np.full((n_classes, n_members), 1.0 / n_members)
        intercept = np.zeros(n_classes)

        def fit_class(c: int) -> LogisticRegression | None:
            labels = objective.labels[:, c]
            known = labels != -1
            if len(np.unique(labels[known])) < 2:
                return None
            return LogisticRegression(C=self.C, max_iter=500).fit(member_logits(probs[:, known, c].T), labels[known])

        for c, model in enumerate(objective.map(fit_class, range(n_classes))):
            if model is not None:
                coef[c], intercept[c] = model.coef_[0], model.intercept_[0]
        self.coef, self.intercept = coef, intercept
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        coef = _fitted(self.coef, self.name, "coef")
        intercept = _fitted(self.intercept, self.name, "intercept")
        out = np.empty(probs.shape[1:], dtype=np.float32)
        for c in range(probs.shape[2]):
            out[:, c] = expit(member_logits(probs[:, :, c].T) @ coef[c] + intercept[c])
        return out

    def member_weights(self, n_members: int, n_classes: int) -> np.ndarray:
        magnitude = np.abs(_fitted(self.coef, self.name, "coef").T)
        return magnitude / np.maximum(magnitude.sum(axis=0, keepdims=True), 1e-12)

    @classmethod
    def average(cls, fitted: Sequence[Self]) -> Self:
        # The folds' models averaged in logit space: coefficients on the folds' scale, which is the scale
        # of the out-of-fold outputs the calibration after it was fitted on.
        return dataclasses.replace(
            fitted[0],
            coef=np.mean([_fitted(f.coef, cls.name, "coef") for f in fitted], axis=0),
            intercept=np.mean([_fitted(f.intercept, cls.name, "intercept") for f in fitted], axis=0),
        )


COMBINERS: dict[str, type[Combiner]] = {
    c.name: c for c in (MeanProb, MeanLogit, RankAverage, Weighted, PerClassSelect, Greedy, Stacking)
}


def make_combiner(name: str, params: dict[str, Any] | None = None) -> Combiner:
    try:
        cls = COMBINERS[name]
    except KeyError:
        raise ValueError(f"unknown combiner {name!r}; known: {', '.join(COMBINERS)}") from None
    return cls.from_state(dict(params or {}))
