"""Combiners: valid probabilities, recipes that reproduce them, and weights that follow member quality."""

import json

import numpy as np
import pytest

from cxrlt.labels import get_schema
from ensembles.combiners import COMBINERS, make_combiner, member_logits
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


def test_greedy_stops_after_patience_steps_without_a_better_prefix(sim):
    n_members = sim.probs.shape[0]
    results = {}
    for patience in (2, 1000):
        objective = Objective(sim.labels, ObjectiveSpec(), SCHEMA.classes, SCHEMA.groups())
        fitted = make_combiner("greedy", {"iterations": 40, "patience": patience}).fit(sim.probs, objective)
        steps = (objective.evaluations - n_members - 1) // n_members  # singles, the start, then M per step
        results[patience] = (fitted.counts, steps)
    (counts, steps), (full_counts, full_steps) = results[2], results[1000]
    assert full_steps == 40 and steps < full_steps
    assert steps == counts.sum() - 1 + 2  # the best prefix (after the one start member), then 2 idle steps
    assert full_counts.sum() >= counts.sum()


def test_per_class_greedy_follows_each_class_best_members():
    sim = simulate(3000, 6, SCHEMA.classes[:6], prevalence=np.full(6, 0.2), seed=5)
    objective = Objective(sim.labels, ObjectiveSpec(), SCHEMA.classes[:6], SCHEMA.groups())
    fitted = make_combiner("greedy", {"scope": "per_class", "iterations": 10}).fit(sim.probs, objective)
    weights = fitted.member_weights(6, 6)
    assert weights.shape == (6, 6) and np.allclose(weights.sum(axis=0), 1.0)
    heaviest = np.argmax(weights, axis=0)
    assert np.mean(sim.quality[heaviest, np.arange(6)] >= np.median(sim.quality, axis=0)) >= 5 / 6
    assert len({tuple(np.round(w, 6)) for w in weights.T}) > 1  # the classes did not all choose alike
    restored = make_combiner("greedy", json.loads(json.dumps(fitted.state())))
    np.testing.assert_allclose(restored.predict(sim.probs), fitted.predict(sim.probs), rtol=1e-6)


def test_threads_do_not_change_a_fit(sim):
    for name, params in (("greedy", {"iterations": 8, "bags": 2}), ("stacking", {}), ("weighted", {})):
        states = []
        for threads in (1, 2):
            objective = Objective(sim.labels, ObjectiveSpec(), SCHEMA.classes, SCHEMA.groups(), threads=threads)
            states.append(make_combiner(name, params).fit(sim.probs, objective).state())
        assert json.dumps(states[0]) == json.dumps(states[1]), name


@pytest.mark.parametrize("name", list(COMBINERS))
def test_averaged_fold_combiners_predict_like_the_folds(sim, objective, name):
    """The recipe's combiner is Combiner.average of the fold combiners (issue #16 item 6): for the
    weighted means in probability space it predicts exactly the mean of their predictions; for logit-space
    ones (stacking, mean_logit) it averages their logits; greedy's counts are summed, as over bags."""
    halves = [np.arange(0, 1500, 2), np.arange(1, 1500, 2)]
    fitted = [make_combiner(name).fit(sim.probs[:, rows], objective.subset(rows)) for rows in halves]
    merged = type(fitted[0]).average(fitted)
    assert merged.name == name
    out = merged.predict(sim.probs)
    if name == "greedy":
        np.testing.assert_array_equal(merged.counts, fitted[0].counts + fitted[1].counts)
    elif name in ("weighted", "per_class_select", "mean_prob", "rank_average"):
        np.testing.assert_allclose(out, np.mean([f.predict(sim.probs) for f in fitted], axis=0), rtol=1e-5, atol=1e-7)
    else:
        folds = np.stack([member_logits(f.predict(sim.probs)) for f in fitted])
        inside = np.all(np.abs(folds) < 10, axis=0)  # away from the clipping at EPS
        assert inside.mean() > 0.5
        np.testing.assert_allclose(member_logits(out)[inside], folds.mean(axis=0)[inside], rtol=1e-3, atol=1e-3)


def test_greedy_in_logit_space_selects_on_mean_logits(sim, objective):
    """space "logit" scores a candidate on its mean logit (AP ignores the expit): the same selection as a
    probability-space greedy handed the logits, and it predicts the expit of the weighted mean logit."""
    logits = member_logits(sim.probs)
    in_logits = make_combiner("greedy", {"iterations": 8, "space": "logit"}).fit(sim.probs, objective)
    handed_logits = make_combiner("greedy", {"iterations": 8}).fit(logits, objective)
    np.testing.assert_array_equal(in_logits.counts, handed_logits.counts)
    weights = in_logits.counts / in_logits.counts.sum()
    expected = 1 / (1 + np.exp(-np.tensordot(weights, logits, axes=1)))
    np.testing.assert_allclose(in_logits.predict(sim.probs), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("space", ["prob", "logit"])
def test_greedy_with_an_mece_term_scores_probabilities(sim, space):
    """With ece_weight the candidates are scored as probabilities (the mean, through expit in logit
    space); without it on their sums, whose ranking is the mean's."""
    scored = []
    for weight in (0.0, 5.0):
        objective = Objective(sim.labels, ObjectiveSpec("map", weight), SCHEMA.classes, SCHEMA.groups())
        fitted = make_combiner("greedy", {"iterations": 3, "space": space}).fit(sim.probs, objective)
        out = fitted.predict(sim.probs)
        assert np.all((out >= 0) & (out <= 1)) and fitted.counts.sum() >= 1
        scored.append(objective(out))
    assert scored[1] < scored[0]  # the mECE penalty is there, on probabilities in [0, 1]
