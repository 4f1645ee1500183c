"""CXR-LT evaluation metrics, vectorised over classes.

The protocol is the one every CXR-LT team's evaluator agrees on (../shared/reference/cxr-lt.md):
macro mAP (sklearn's average_precision_score per class) is primary; mAUROC, mF1 at a fixed threshold,
mECE (10 equal-width bins), mAP per head/medium/tail group and their average, and the false-negative
rate on critical findings are reported beside it.

Why not a loop over sklearn: evaluation runs every epoch on ~80k x 45 predictions and inside ensemble
searches thousands of times. One sort per class feeds AP and AUROC at once, and ties are resolved
the way sklearn does (a tie group is one threshold), so results equal sklearn's to floating-point
rounding; tests/test_metrics.py checks this with hypothesis, ties and unknown labels included.

Policies:
- A label of -1 (unknown) removes that sample from that class only.
- A class with no known positives or no known negatives has undefined AP/AUROC. It is *excluded* from
  every macro mean (so all means average the same classes) and named in `Evaluation.excluded`.
- F1 and the false-negative rate use `score >= threshold` as the positive prediction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from cxrlt.labels import GROUPS

DEFAULT_THRESHOLD = 0.5
DEFAULT_ECE_BINS = 10
# Findings where a miss needs urgent action; the FNR on these is reported when the schema has them.
DEFAULT_CRITICAL = (
    "Pneumothorax", "Hydropneumothorax", "Pneumoperitoneum", "Pneumomediastinum", "Pulmonary Embolism",
)  # fmt: skip


def _check_inputs(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim == 1:
        y_true, y_score = y_true[:, None], y_score.reshape(-1, 1)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} must be the same (N, C) shape")
    bad_labels = ~np.isin(y_true, (0.0, 1.0, -1.0))
    if bad_labels.any():
        row, col = np.argwhere(bad_labels)[0]
        raise ValueError(f"label at row {row}, column {col} is {y_true[row, col]!r}; expected 1, 0 or -1")
    if not np.isfinite(y_score).all():
        row, col = np.argwhere(~np.isfinite(y_score))[0]
        raise ValueError(f"score at row {row}, column {col} is {y_score[row, col]!r}; scores must be finite")
    return y_true, y_score


def ranking_metrics(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class average precision and ROC AUC, equal to sklearn's; NaN where a class is degenerate.

    y_true: (N, C) in {1, 0, -1}; y_score: (N, C) any finite reals (probabilities or logits).
    """
    y_true, y_score = _check_inputs(y_true, y_score)
    # (C, N) layout: each class's samples are contiguous, so the per-class sort is cache-friendly.
    scores = np.ascontiguousarray(y_score.T)
    order = np.argsort(-scores, axis=1)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    labels = np.take_along_axis(np.ascontiguousarray(y_true.T), order, axis=1)
    pos = (labels == 1).astype(np.float64)
    neg = (labels == 0).astype(np.float64)  # unknowns (-1) weigh zero in both
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    tps = np.cumsum(pos, axis=1)

    n = scores.shape[1]
    positions = np.broadcast_to(np.arange(n), scores.shape)
    # A tie group is one threshold: every member sees the counts at the group's last position.
    group_end = np.ones(scores.shape, dtype=bool)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    group_start = np.ones(scores.shape, dtype=bool)
    group_start[:, 1:] = group_end[:, :-1]
    end_index = np.minimum.accumulate(np.where(group_end, positions, n)[:, ::-1], axis=1)[:, ::-1]
    start_index = np.maximum.accumulate(np.where(group_start, positions, 0), axis=1)
    tps_at_end = np.take_along_axis(tps, end_index, axis=1)
    fps_at_end = np.take_along_axis(np.cumsum(neg, axis=1), end_index, axis=1)
    tps_above = np.take_along_axis(tps - pos, start_index, axis=1)  # positives strictly higher

    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pos > 0, tps_at_end / (tps_at_end + fps_at_end), 0.0)
        # AP = sum over thresholds of recall increase x precision = each positive's precision / P.
        ap = precision.sum(axis=1) / n_pos
        # AUROC = P(positive ranked above negative), a tie counting one half (sklearn's trapezoids).
        auroc = (neg * (tps_at_end + tps_above)).sum(axis=1) / (2.0 * n_pos * n_neg)
    degenerate = (n_pos == 0) | (n_neg == 0)
    ap[degenerate] = np.nan
    auroc[degenerate] = np.nan
    return ap, auroc


def threshold_metrics(
    y_true: np.ndarray, y_score: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 (sklearn's f1_score, zero_division=0) and false-negative rate at `threshold`."""
    y_true, y_score = _check_inputs(y_true, y_score)
    predicted = y_score >= threshold
    pos, neg = y_true == 1, y_true == 0
    tp = (predicted & pos).sum(axis=0)
    fp = (predicted & neg).sum(axis=0)
    fn = (~predicted & pos).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        fnr = np.where(tp + fn > 0, fn / (tp + fn), np.nan)
    return f1, fnr


def expected_calibration_error(
    y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> np.ndarray:
    """Per-class binary ECE over equal-width bins: sum_b (n_b / n) |mean(y)_b - mean(p)_b|.

    Bins follow sklearn.calibration.calibration_curve(strategy="uniform"), so a probability on an edge
    falls in the lower bin. NaN for a class with no known labels.
    """
    y_true, y_prob = _check_inputs(y_true, y_prob)
    if y_prob.min(initial=0.0) < 0 or y_prob.max(initial=0.0) > 1:
        raise ValueError("ECE needs probabilities in [0, 1]")
    n_classes = y_true.shape[1]
    known = (y_true >= 0).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    flat_bin = (np.searchsorted(edges[1:-1], y_prob) + n_bins * np.arange(n_classes)).ravel()
    size = n_bins * n_classes
    sum_true = np.bincount(flat_bin, weights=(known * (y_true == 1)).ravel(), minlength=size)
    sum_prob = np.bincount(flat_bin, weights=(known * y_prob).ravel(), minlength=size)
    gap = np.abs(sum_true - sum_prob).reshape(n_classes, n_bins).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return gap / known.sum(axis=0)


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    group: str | None
    n: int  # samples with a known label
    n_positive: int
    prevalence: float
    ap: float
    auroc: float
    f1: float
    ece: float
    fnr: float


@dataclass(frozen=True)
class Evaluation:
    n_samples: int
    mAP: float
    mAUROC: float
    mF1: float
    mECE: float
    group_mAP: dict[str, float]
    group_average_mAP: float
    per_class: list[ClassMetrics]
    critical_fnr: dict[str, float]
    excluded: dict[str, str] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""

        def clean(value):
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def evaluate(
    y_true: np.ndarray,
    y_score: np.ndarray,
    classes: Sequence[str],
    groups: Mapping[str, str] | None = None,
    critical: Sequence[str] = DEFAULT_CRITICAL,
    threshold: float = DEFAULT_THRESHOLD,
    n_bins: int = DEFAULT_ECE_BINS,
) -> Evaluation:
    """The full CXR-LT report for (N, C) labels in {1, 0, -1} and (N, C) probabilities.

    groups: class -> head/medium/tail (classes left out belong to no group). critical: class names whose
    false-negative rate is reported; names not in `classes` are ignored.
    """
    y_true, y_score = _check_inputs(y_true, y_score)
    if len(classes) != y_true.shape[1]:
        raise ValueError(f"{len(classes)} class names for {y_true.shape[1]} columns")
    groups = dict(groups or {})
    unknown_groups = set(groups.values()) - set(GROUPS)
    if unknown_groups:
        raise ValueError(f"unknown group names {sorted(unknown_groups)}; expected {GROUPS}")

    ap, auroc = ranking_metrics(y_true, y_score)
    f1, fnr = threshold_metrics(y_true, y_score, threshold)
    ece = expected_calibration_error(y_true, y_score, n_bins)
    n_known = (y_true >= 0).sum(axis=0)
    n_pos = (y_true == 1).sum(axis=0)

    excluded = {}
    for j, name in enumerate(classes):
        if n_pos[j] == 0:
            excluded[name] = "no positive samples"
        elif n_pos[j] == n_known[j]:
            excluded[name] = "no negative samples"
    valid = np.array([c not in excluded for c in classes])

    per_class = [
        ClassMetrics(
            name=name,
            group=groups.get(name),
            n=int(n_known[j]),
            n_positive=int(n_pos[j]),
            prevalence=float(n_pos[j] / n_known[j]) if n_known[j] else math.nan,
            ap=float(ap[j]),
            auroc=float(auroc[j]),
            f1=float(f1[j]),
            ece=float(ece[j]),
            fnr=float(fnr[j]),
        )
        for j, name in enumerate(classes)
    ]
    group_mAP = {}
    for group in GROUPS:
        members = np.array([groups.get(c) == group for c in classes]) & valid
        if members.any():
            group_mAP[group] = float(ap[members].mean())
    return Evaluation(
        n_samples=int(y_true.shape[0]),
        mAP=_nanmean(np.where(valid, ap, np.nan)),
        mAUROC=_nanmean(np.where(valid, auroc, np.nan)),
        mF1=_nanmean(np.where(valid, f1, np.nan)),
        mECE=_nanmean(np.where(valid, ece, np.nan)),
        group_mAP=group_mAP,
        group_average_mAP=float(np.mean(list(group_mAP.values()))) if group_mAP else math.nan,
        per_class=per_class,
        critical_fnr={c: float(fnr[j]) for j, c in enumerate(classes) if c in set(critical)},
        excluded=excluded,
        threshold=threshold,
    )
