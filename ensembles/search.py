"""Ray Tune search over combiners and their hyperparameters, scored out of fold on patient-grouped folds.

Each trial is one combiner with one setting of its hyperparameters; its score is the objective on the
pooled out-of-fold predictions (fit on k-1 folds, predict the held-out fold), so weights fitted inside
a combiner never see the rows that score them. Parameter-free combiners (means, rank average) are
evaluated once each as Tune's `points_to_evaluate`; `samples` more trials are drawn at random by
Tune's BasicVariantGenerator over the fitted combiners' spaces. Picking the best of a few dozen trials
on the same folds is the only selection not inside the folds; tests check the result against a
held-out split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ensembles.combiners import Combiner, make_combiner
from ensembles.config import SearchConfig
from ensembles.folds import out_of_fold
from ensembles.objective import Objective, ObjectiveSpec

PARAMETER_FREE = ("mean_prob", "mean_logit", "rank_average")


def search_space(n_members: int) -> dict[str, Any]:
    from ray import tune

    return {
        "weighted": {
            "scope": tune.choice(["global", "per_class"]),
            "temperature": tune.loguniform(0.1, 10.0),
            "space": tune.choice(["prob", "logit"]),
        },
        "per_class_select": {"top_k": tune.randint(1, max(2, min(5, n_members) + 1))},
        "greedy": {
            "iterations": tune.randint(5, 4 * n_members + 6),
            "init": tune.randint(1, min(3, n_members) + 1),
            "bags": tune.choice([1, 5, 10]),
            "bag_fraction": tune.uniform(0.3, 0.8),
        },
        "stacking": {"C": tune.loguniform(1e-3, 10.0)},
    }


def trial_combiner(config: Mapping[str, Any]) -> Combiner:
    name = config["combiner"]
    return make_combiner(name, dict(config.get("params", {}).get(name, {})))


def score_out_of_fold(
    combiner: Combiner, probs: np.ndarray, objective: Objective, folds: np.ndarray
) -> tuple[float, np.ndarray]:
    """(objective on the pooled out-of-fold predictions, those predictions)."""
    settings = combiner.state()

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        fitted = type(combiner).from_state(settings).fit(probs[:, train], objective.subset(train))
        return fitted.predict(probs[:, test])

    oof = out_of_fold(folds, fit_predict, probs.shape[2])
    return objective(oof), oof


def _trial(config: dict[str, Any], probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, context: dict) -> None:
    from ray import tune

    objective = Objective(labels, context["spec"], context["classes"], context["groups"])
    score, _ = score_out_of_fold(trial_combiner(config), probs, objective, folds)
    tune.report({"score": score})


@dataclass(frozen=True)
class Trial:
    combiner: str
    params: dict[str, Any]
    score: float


def run_search(
    probs: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    spec: ObjectiveSpec,
    classes: tuple[str, ...],
    groups: Mapping[str, str],
    config: SearchConfig,
    storage: Path,
) -> list[Trial]:
    """All trials, best first. Starts Ray with `config.cpus` CPUs unless it is already running."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    fixed = [c for c in config.combiners if c in PARAMETER_FREE]
    fitted = [c for c in config.combiners if c not in PARAMETER_FREE]
    space = search_space(probs.shape[0])
    param_space: dict[str, Any] = {
        "combiner": tune.choice(fitted or fixed),
        "params": {name: space[name] for name in fitted},
    }
    points = [{"combiner": name} for name in fixed]
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=config.cpus, include_dashboard=False, log_to_driver=False)
    try:
        trainable = tune.with_parameters(
            _trial,
            probs=probs,
            labels=labels,
            folds=folds,
            context={"spec": spec, "classes": tuple(classes), "groups": dict(groups)},
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="score",
                mode="max",
                num_samples=len(points) + (config.samples if fitted else 0),
                search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=config.seed),
            ),
            run_config=tune.RunConfig(storage_path=str(storage.resolve()), name="search", verbose=0),
        )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    trials = []
    for result in results:
        if result.error is not None:
            raise RuntimeError(f"search trial {result.config} failed: {result.error}")
        name = result.config["combiner"]
        params = dict(result.config.get("params", {}).get(name, {}))
        trials.append(Trial(combiner=name, params=params, score=float(result.metrics["score"])))
    return sorted(trials, key=lambda t: -t.score)
