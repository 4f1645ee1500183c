"""View aggregation, calibration and patient-grouped folds."""

import numpy as np
import pytest

from cxrlt.metrics import class_metrics
from ensembles.calibration import Calibrator
from ensembles.folds import out_of_fold, patient_folds
from ensembles.objective import Objective, ObjectiveSpec
from ensembles.views import Studies, ViewAggregator

PROBS = np.array([[0.2, 0.9], [0.6, 0.1], [0.4, 0.4], [0.8, 0.3]], dtype=np.float32)
STUDIES = np.array(["s2", "s2", "s1", "s2"], dtype=object)
VIEWS = np.array(["PA", "LATERAL", "AP", "LATERAL"], dtype=object)


@pytest.mark.parametrize(
    "method, frontal_weight, expected_s2",
    [
        ("mean", 2.0, [(0.2 + 0.6 + 0.8) / 3, (0.9 + 0.1 + 0.3) / 3]),
        ("max", 2.0, [0.8, 0.9]),
        ("frontal", 3.0, [(3 * 0.2 + 0.6 + 0.8) / 5, (3 * 0.9 + 0.1 + 0.3) / 5]),
    ],
)
def test_study_prediction_is_copied_to_every_image(method, frontal_weight, expected_s2):
    out = ViewAggregator(method, frontal_weight).predict(PROBS, Studies.of(STUDIES), VIEWS)
    for row in (0, 1, 3):
        np.testing.assert_allclose(out[row], expected_s2, rtol=1e-6)
    np.testing.assert_allclose(out[2], PROBS[2])  # a one-image study keeps its prediction


def test_learned_aggregation_picks_max_where_one_view_carries_the_finding():
    rng = np.random.default_rng(0)
    studies = np.repeat(np.arange(300), 2).astype(str)
    labels = np.repeat((rng.random((300, 1)) < 0.3).astype(float), 2, axis=0)
    seen_in = rng.integers(0, 2, 300)  # the finding shows in one view only
    probs = rng.random((600, 1)) * 0.4
    probs[2 * np.arange(300) + seen_in] += 0.3 * labels[::2]
    objective = Objective(labels, ObjectiveSpec(), ("x",), {})
    agg = ViewAggregator("learned").fit(probs, Studies.of(studies), np.array([""] * 600), objective)
    assert agg.alpha[0] >= 0.75
    restored = ViewAggregator.from_state(agg.state())
    np.testing.assert_allclose(
        restored.predict(probs, Studies.of(studies), np.array([""] * 600)),
        agg.predict(probs, Studies.of(studies), np.array([""] * 600)),
    )


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_lowers_ece_of_overconfident_scores(method):
    rng = np.random.default_rng(1)
    truth = rng.random((4000, 3)) * 0.6
    labels = (rng.random((4000, 3)) < truth).astype(float)
    labels[:50, 0] = -1
    overconfident = 1 / (1 + np.exp(-3 * np.log(truth / (1 - truth))))
    fitted = Calibrator(method).fit(overconfident[:2000], labels[:2000])
    after = Calibrator.from_state(fitted.state()).predict(overconfident[2000:])
    before_ece = class_metrics(labels[2000:], overconfident[2000:]).ece.mean()
    after_ece = class_metrics(labels[2000:], after).ece.mean()
    assert after_ece < 0.5 * before_ece
    if method == "temperature":  # a monotone map per class keeps AP (up to float32 rounding ties)
        np.testing.assert_allclose(
            class_metrics(labels[2000:], after).ap, class_metrics(labels[2000:], overconfident[2000:]).ap, rtol=1e-4
        )  # float32 ties


def test_folds_never_split_a_patient_and_oof_never_sees_its_own_rows():
    patients = np.repeat(np.arange(40), np.arange(40) % 4 + 1).astype(str)
    folds = patient_folds(patients, 5, seed=0)
    for p in np.unique(patients):
        assert np.unique(folds[patients == p]).size == 1
    assert set(folds) == set(range(5))

    def fit_predict(train, test):
        assert not set(train) & set(test)
        assert set(patients[train]).isdisjoint(patients[test])
        return np.full((test.size, 1), folds[test[0]], dtype=np.float32)

    np.testing.assert_array_equal(out_of_fold(folds, fit_predict, 1)[:, 0], folds)


def test_the_declared_scikit_learn_floor_has_a_shuffling_group_kfold():
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    requirement = next(Requirement(d) for d in pyproject["project"]["dependencies"] if d.startswith("scikit-learn"))
    # GroupKFold's shuffle and random_state (patient_folds uses both) arrived in scikit-learn 1.6.
    assert not requirement.specifier.contains(Version("1.5.2"))
    assert requirement.specifier.contains(Version("1.6.0"))
