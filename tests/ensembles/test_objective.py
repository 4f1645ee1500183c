"""The search objective equals cxrlt.metrics (sklearn's AP) and weighs the groups it says it does."""

import numpy as np
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
