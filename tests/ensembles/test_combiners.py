"""Combiners: valid probabilities, recipes that reproduce them, and weights that follow member quality."""

import json

import numpy as np
import pytest

from cxrlt.labels import get_schema
from ensembles.combiners import COMBINERS, make_combiner
from ensembles.objective import Objective, ObjectiveSpec
from ensembles.simulate import simulate

SCHEMA = get_schema("cxr-lt-2024-task2")


@pytest.fixture(scope="module")
def sim():
    return simulate(1500, 5, SCHEMA.classes, seed=7)


@pytest.fixture(scope="module")
def objective(sim):
    return Objective(sim.labels, ObjectiveSpec(), SCHEMA.classes, SCHEMA.groups())


@pytest.mark.parametrize("name", list(COMBINERS))
def test_state_round_trips_through_json_and_predicts_the_same(sim, objective, name):
    fitted = make_combiner(name).fit(sim.probs, objective)
    out = fitted.predict(sim.probs)
    assert out.shape == sim.probs.shape[1:] and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    restored = make_combiner(name, json.loads(json.dumps(fitted.state())))
    np.testing.assert_allclose(restored.predict(sim.probs), out, rtol=1e-6)
    weights = fitted.member_weights(5, len(SCHEMA.classes))
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-6)


def test_fitted_combiners_weight_the_better_members(sim, objective):
    quality = sim.quality.mean(axis=1)
    best, worst = int(np.argmax(quality)), int(np.argmin(quality))
    for name, params in (("greedy", {"iterations": 10}), ("weighted", {"temperature": 3.0})):
        weights = make_combiner(name, params).fit(sim.probs, objective).member_weights(5, len(SCHEMA.classes))
        assert weights[best].mean() > weights[worst].mean(), name
    per_class = make_combiner("per_class_select", {"top_k": 1}).fit(sim.probs, objective)
    picked = np.argmax(per_class.weights, axis=0)
    agree = np.mean(picked == np.argmax(sim.quality, axis=0))
    assert agree > 0.5


def test_greedy_beats_the_mean_in_sample_and_mean_logit_differs_from_mean_prob(sim, objective):
    mean = objective(make_combiner("mean_prob").predict(sim.probs))
    greedy = make_combiner("greedy", {"iterations": 15, "bags": 3, "bag_fraction": 0.6}).fit(sim.probs, objective)
    assert objective(greedy.predict(sim.probs)) > mean
    assert not np.allclose(
        make_combiner("mean_logit").predict(sim.probs), make_combiner("mean_prob").predict(sim.probs)
    )


def test_unknown_combiner_and_setting_are_named():
    with pytest.raises(ValueError, match="unknown combiner 'median'"):
        make_combiner("median")
    with pytest.raises(ValueError, match=r"combiner 'greedy' has no setting\(s\) \['temperature'\]"):
        make_combiner("greedy", {"temperature": 1.0})
