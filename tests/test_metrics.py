"""cxrlt.metrics equals scikit-learn per class (ties and unknown labels included) and applies the
CXR-LT exclusion and grouping policies."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxrlt.metrics import class_metrics, evaluate


def sklearn_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], p), minlength=n_bins)
    return float(np.sum(counts[counts > 0] * np.abs(prob_true - prob_pred)) / y.size)


@st.composite
def label_score_matrices(draw):
    n = draw(st.integers(2, 60))
    c = draw(st.integers(1, 4))
    labels = draw(arrays(np.int8, (n, c), elements=st.sampled_from([1, 0, 0, -1])))
    # Few distinct values => many ties, the case where hand-rolled AP/AUROC usually drift from sklearn.
    grid = draw(st.sampled_from([3, 10, 1000]))
    scores = draw(arrays(np.int64, (n, c), elements=st.integers(0, grid))) / grid
    return labels.astype(np.float64), scores


@settings(max_examples=300, deadline=None)
@given(label_score_matrices())
def test_every_class_metric_equals_sklearn_on_the_known_labels(data):
    labels, scores = data
    got = class_metrics(labels, scores)
    for j in range(labels.shape[1]):
        known = labels[:, j] >= 0
        y, p = labels[known, j], scores[known, j]
        assert got.n[j] == known.sum() and got.n_positive[j] == (y == 1).sum()
        if y.size == 0:
            continue
        assert got.f1[j] == pytest.approx(f1_score(y, p >= 0.5, zero_division=0), abs=1e-9)
        assert got.ece[j] == pytest.approx(sklearn_ece(y, p), abs=1e-9)
        if (y == 1).any():
            assert got.fnr[j] == pytest.approx(np.mean(p[y == 1] < 0.5), abs=1e-12)
        if len(np.unique(y)) == 2:
            assert got.ap[j] == pytest.approx(average_precision_score(y, p), abs=1e-9)
            assert got.auroc[j] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
        else:
            assert math.isnan(got.ap[j]) and math.isnan(got.auroc[j])


def test_probability_on_a_bin_edge_falls_in_the_lower_bin_like_calibration_curve():
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.3, 0.3, 0.7, 0.1])
    assert class_metrics(y, p).ece[0] == pytest.approx(sklearn_ece(y, p), abs=1e-12)


def test_degenerate_classes_are_excluded_from_every_mean_and_named():
    labels = np.array([[1, 0, -1], [0, 0, -1], [1, 0, -1], [0, 0, -1]], dtype=float)
    labels[:, 1] = [1, 1, 1, 1]
    scores = np.array([[0.9, 0.8, 0.5], [0.2, 0.7, 0.5], [0.6, 0.9, 0.5], [0.4, 0.6, 0.5]])
    result = evaluate(labels, scores, ["A", "B", "C"])
    assert result.excluded == {"B": "no negative samples", "C": "no known labels"}
    assert result.mAP == pytest.approx(average_precision_score(labels[:, 0], scores[:, 0]))
    assert result.mF1 == pytest.approx(f1_score(labels[:, 0], scores[:, 0] >= 0.5))
    assert result.mECE == pytest.approx(sklearn_ece(labels[:, 0], scores[:, 0]))


def test_group_means_and_their_average():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 4)) < 0.3).astype(float)
    scores = rng.random((200, 4))
    groups = {"a": "head", "b": "head", "c": "tail"}  # "d" belongs to no group
    result = evaluate(labels, scores, ["a", "b", "c", "d"], groups)
    ap = [average_precision_score(labels[:, j], scores[:, j]) for j in range(4)]
    assert result.group_mAP == pytest.approx({"head": (ap[0] + ap[1]) / 2, "tail": ap[2]})
    assert result.group_average_mAP == pytest.approx(((ap[0] + ap[1]) / 2 + ap[2]) / 2)
    assert result.mAP == pytest.approx(np.mean(ap))


def test_critical_false_negative_rate_counts_missed_positives_at_the_threshold():
    labels = np.array([[1, 1], [1, 0], [1, 1], [0, 1]], dtype=float)
    scores = np.array([[0.9, 0.2], [0.4, 0.9], [0.5, 0.1], [0.8, 0.7]])
    result = evaluate(labels, scores, ["Pneumothorax", "Edema"], critical=["Pneumothorax"])
    assert result.critical_fnr == {"Pneumothorax": pytest.approx(1 / 3)}
    per_class = {c.name: c for c in result.per_class}
    assert per_class["Edema"].fnr == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "labels, scores, message",
    [
        ([[2.0]], [[0.5]], "label at row 0, column 0 is 2.0"),
        ([[1.0]], [[np.nan]], "score at row 0, column 0 is nan"),
        ([[1.0]], [[1.5]], "expected a probability"),
    ],
)
def test_invalid_inputs_name_the_cell(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        class_metrics(np.array(labels), np.array(scores))


def test_evaluation_json_has_no_nan():
    result = evaluate(np.array([[1.0], [1.0]]), np.array([[0.2], [0.8]]), ["A"])
    payload = result.to_dict()
    assert payload["mAP"] is None and payload["per_class"][0]["ap"] is None
