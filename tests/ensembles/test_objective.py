"""The search objective equals cxrlt.metrics (sklearn's AP) and weighs the groups it says it does."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrlt.metrics import class_metrics, evaluate
from ensembles.objective import Objective, ObjectiveSpec

CLASSES = ("a", "b", "c", "d")
GROUPS = {"a": "head", "b": "medium", "c": "tail", "d": "tail"}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 80))
def test_per_class_ap_equals_class_metrics_with_ties_and_unknowns(seed, n):
    rng = np.random.default_rng(seed)
    labels = rng.choice([1.0, 0.0, -1.0], size=(n, 4), p=[0.3, 0.6, 0.1])
    probs = rng.integers(0, 6, size=(n, 4)) / 5.0  # few distinct values: many ties
    expected = class_metrics(labels, probs).ap
    valid = ~np.isnan(expected)
    if not valid.any():
        return
    got = Objective(labels, ObjectiveSpec(), CLASSES, GROUPS).per_class_ap(probs.astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-9, equal_nan=True)


def test_scores_match_evaluate_for_each_kind():
    rng = np.random.default_rng(1)
    labels = (rng.random((400, 4)) < [0.4, 0.2, 0.05, 0.1]).astype(float)
    probs = np.clip(0.3 * labels + rng.random((400, 4)) * 0.7, 0, 1)
    result = evaluate(labels, probs, CLASSES, GROUPS)
    tail = np.mean([c.ap for c in result.per_class if c.group == "tail"])
    for kind, expected in (("map", result.mAP), ("group_map", result.group_average_mAP), ("tail_map", tail)):
        assert abs(Objective(labels, ObjectiveSpec(kind), CLASSES, GROUPS)(probs) - expected) < 1e-9
    mixed = Objective(labels, ObjectiveSpec("map", ece_weight=2.0), CLASSES, GROUPS)(probs)
    assert abs(mixed - (result.mAP - 2.0 * result.mECE)) < 1e-9


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 60), st.booleans())
def test_per_class_ap_equals_sklearn_on_float32_ties_and_a_class_subset(seed, n, subset):
    """Issue #17's faster AP (no transposed copy, no negative pruning) against sklearn itself."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    labels = rng.choice([1.0, 0.0, -1.0], size=(n, 4), p=[0.3, 0.6, 0.1])
    probs = (rng.integers(0, 4, size=(n, 4)) / 3.0).astype(np.float32)  # four values: ties everywhere
    classes = np.array([0, 2]) if subset else None
    got = Objective(labels, ObjectiveSpec(), CLASSES, GROUPS).per_class_ap(probs, classes)
    for j in range(4):
        known = labels[:, j] != -1
        y = labels[known, j]
        if (classes is not None and j not in classes) or y.min(initial=1) == y.max(initial=0):
            assert np.isnan(got[j])
        else:
            assert got[j] == pytest.approx(average_precision_score(y, probs[known, j]), rel=1e-12)


def test_threads_give_the_same_scores_in_order_and_every_evaluation_is_counted():
    rng = np.random.default_rng(2)
    labels = (rng.random((200, 4)) < 0.3).astype(float)
    objective = Objective(labels, ObjectiveSpec(), CLASSES, GROUPS, threads=2)
    fold = objective.subset(np.arange(100))
    candidates = [rng.random((100, 4)) for _ in range(50)]
    threaded = fold.map(fold, candidates)
    assert threaded == [fold(p) for p in candidates]
    objective(rng.random((200, 4)))
    assert objective.evaluations == fold.evaluations == 101  # 50 threaded + 50 in turn + 1, on one count
