"""Time cxrlt.metrics against a per-class scikit-learn loop at CXR-LT 2024 scale.

78,946 images x 45 classes (the size of the 2024 test set with the 45-class union), realistic
prevalences from the Task 1 training counts, 3-decimal scores (so ties are common, as in submissions)
and 5% unknown labels. Targets: <= 2 s on one core and >= 10x faster than the sklearn loop, with the
same numbers. Run: `.venv/bin/python benchmarks/metrics.py`.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # one core, as the target says; must precede numpy's import

import argparse
import time

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxrlt.labels import CXR_LT_2024_ALL
from cxrlt.metrics import evaluate


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prevalence = np.array([CXR_LT_2024_ALL.counts.get(c, 100) / CXR_LT_2024_ALL.total for c in CXR_LT_2024_ALL.classes])
    labels = (rng.random((n, prevalence.size)) < prevalence).astype(np.float64)
    scores = np.clip(0.35 * labels + rng.beta(1.2, 6.0, labels.shape), 0, 1).round(3)
    labels[rng.random(labels.shape) < 0.05] = -1
    return labels, scores


def sklearn_loop(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    out = {k: np.full(labels.shape[1], np.nan) for k in ("ap", "auroc", "f1", "ece")}
    for j in range(labels.shape[1]):
        known = labels[:, j] >= 0
        y, p = labels[known, j], scores[known, j]
        out["ap"][j] = average_precision_score(y, p)
        out["auroc"][j] = roc_auc_score(y, p)
        out["f1"][j] = f1_score(y, p >= 0.5, zero_division=0)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
        counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
        out["ece"][j] = np.sum(counts[counts > 0] * np.abs(prob_true - prob_pred)) / y.size
    return out


def best_of(repeats: int, fn, *args):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=78_946)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    labels, scores = make_data(args.rows, seed=0)
    classes = CXR_LT_2024_ALL.classes
    ours_s, ours = best_of(args.repeats, evaluate, labels, scores, classes, CXR_LT_2024_ALL.groups())
    ref_s, ref = best_of(1, sklearn_loop, labels, scores)
    per_class = {k: np.array([getattr(c, k) for c in ours.per_class]) for k in ("ap", "auroc", "f1", "ece")}
    worst = {k: float(np.nanmax(np.abs(per_class[k] - ref[k]))) for k in per_class}
    print(f"data: {args.rows:,} x {len(classes)} predictions, 3-decimal scores, 5% unknown labels, 1 thread")
    print(f"cxrlt.metrics.evaluate (all metrics + groups): {ours_s:.3f} s (best of {args.repeats})")
    print(f"per-class sklearn loop (AP, AUROC, F1, ECE):   {ref_s:.3f} s")
    print(f"speed-up: {ref_s / ours_s:.1f}x   (targets: <= 2 s, >= 10x)")
    print("max |cxrlt - sklearn| per metric: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    print(f"mAP {ours.mAP:.4f}  mAUROC {ours.mAUROC:.4f}  mF1 {ours.mF1:.4f}  mECE {ours.mECE:.4f}")


if __name__ == "__main__":
    main()
