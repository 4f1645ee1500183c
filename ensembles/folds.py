"""Cross-validation folds grouped by patient, and out-of-fold prediction with any fitted step.

Images of one patient (and so every view of a study) always fall in the same fold: a model fitted on
one view of a patient and scored on another would report an optimistic score, a defect of several
public CXR-LT validation splits. The score reported for a fitted step is computed on the pooled
out-of-fold predictions, never on the rows it was fitted on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.model_selection import GroupKFold

from cxrlt.errors import InputError


def patient_folds(patient_ids: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold number (0..n_folds-1) of each row; all rows of a patient share a fold."""
    n_patients = len(set(patient_ids.tolist()))
    if n_folds < 2:
        raise InputError(f"folds must be >= 2, got {n_folds}")
    if n_patients < n_folds:
        raise InputError(f"{n_folds} folds need at least {n_folds} patients; the labels have {n_patients}")
    folds = np.empty(len(patient_ids), dtype=np.int64)
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(patient_ids)), groups=patient_ids)):
        folds[test] = k
    return folds


def out_of_fold(
    folds: np.ndarray,
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_columns: int,
) -> np.ndarray:
    """(N, n_columns) predictions where row i comes from `fit_predict(train_rows, test_rows)` of the fold
    that holds i out: fit on `train_rows` only, predict `test_rows`."""
    oof = np.empty((folds.size, n_columns), dtype=np.float32)
    for k in np.unique(folds):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        oof[test] = fit_predict(train, test)
    return oof
