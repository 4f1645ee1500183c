"""Ray Tune search over combiners and their hyperparameters, scored out of fold on patient-grouped folds.

Each trial is one combiner with one setting of its hyperparameters, fitted fold by fold (fit on k-1 folds,
predict the held-out one). After each fold it reports the objective on the pooled out-of-fold predictions
of the folds done so far, and Ray Tune's ASHA scheduler uses the folds as rungs: a trial whose score
after 1, 2 or 4 folds is below the median of the trials that reached that rung before it is stopped.
Every trial runs the same folds in the same order, so scores at a rung are on the same rows. Only trials
that ran every fold compete for the recipe; the score a trial is chosen by is always the one on all rows.

The trial list is drawn here, seeded (`SearchConfig.seed`): every parameter-free combiner (means, rank
average) once, then `samples` draws from the fitted combiners' Tune domains. It is ordered cheapest
first, so the bars ASHA stops trials against are set by quick trials before the expensive ones run, and
a searcher hands it to Tune in that order. Trials run one after another, each on all `cpus` CPUs (its
objective evaluates a greedy step's candidates, the members' scores, stacking's classes on that many
threads): with trials side by side, which of two trials reached a rung first, and so ASHA's decisions,
would depend on timing, and the same data and config could give another recipe. One at a time, a
decision depends only on the trials before it, and a search is reproducible. A finished trial's checkpoint
is its fold combiners' states: the build merges them into the recipe's combiner and has each predict its
held-out fold again (no fit is repeated).

While it runs, one line per finished trial (combiner, settings, out-of-fold score, seconds) goes to the
console above a bar over trials; Ray's own banners and warnings are shown only with `verbose`.
Picking the best of a few dozen trials on the same folds is the only selection not inside the folds;
tests check the result against a held-out split.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from ensembles.combiners import Combiner, make_combiner
from ensembles.config import SearchConfig
from ensembles.objective import Objective, ObjectiveSpec

PARAMETER_FREE = ("mean_prob", "mean_logit", "rank_average")
FOLDS_FILE = "folds.json"
# Rough cost of one fold fit, in objective evaluations per member, to order trials cheapest first.
# weighted and per_class_select score each member once; stacking's logistic regressions cost about as
# much as a few evaluations each; greedy scores every candidate of every step (below).
COST = {"weighted": 1.0, "per_class_select": 1.0, "stacking": 5.0}


def search_space(n_members: int) -> dict[str, Any]:
    """Ray Tune domains of each fitted combiner's hyperparameters, for `n_members` members."""
    from ray import tune

    return {
        "weighted": {
            "scope": tune.choice(["global", "per_class"]),
            "temperature": tune.loguniform(0.1, 10.0),
            "space": tune.choice(["prob", "logit"]),
        },
        "per_class_select": {"top_k": tune.randint(1, max(2, min(5, n_members) + 1))},
        "greedy": {
            # A cap: selection stops earlier once `patience` steps bring nothing (Greedy). Twice the
            # members is room for every member twice; the 4x of earlier versions was never reached
            # before the score had stopped rising.
            "iterations": tune.randint(max(5, n_members // 2), 2 * n_members + 2),
            "init": tune.randint(1, min(3, n_members) + 1),
            "bags": tune.choice([1, 1, 5]),
            "bag_fraction": tune.uniform(0.3, 0.8),
            "scope": tune.choice(["global", "per_class"]),
            "space": tune.choice(["prob", "logit"]),
        },
        "stacking": {"C": tune.loguniform(1e-3, 10.0)},
    }


def _cost(trial: Mapping[str, Any], n_members: int) -> float:
    params = trial["params"]
    if trial["combiner"] in PARAMETER_FREE:
        return 0.0
    if trial["combiner"] != "greedy":
        return COST[trial["combiner"]] * n_members
    pool = n_members if params.get("bags", 1) == 1 else max(1, round(params["bag_fraction"] * n_members))
    return n_members + params.get("bags", 1) * pool * params.get("iterations", 20)


def draw_trials(combiners: list[str], n_members: int, samples: int, seed: int) -> list[dict[str, Any]]:
    """The search's trial configs {"combiner", "params"}: parameter-free combiners once each, then
    `samples` seeded draws over the fitted ones, cheapest first."""
    from ray.tune.search.sample import Domain

    rng = np.random.default_rng(seed)
    fitted = [c for c in combiners if c not in PARAMETER_FREE]
    space = search_space(n_members)
    drawn = []
    for _ in range(samples if fitted else 0):
        name = fitted[int(rng.integers(len(fitted)))]
        params = {k: v.sample(random_state=rng) if isinstance(v, Domain) else v for k, v in space[name].items()}
        drawn.append({"combiner": name, "params": params})
    fixed = [{"combiner": c, "params": {}} for c in combiners if c in PARAMETER_FREE]
    return fixed + sorted(drawn, key=lambda t: _cost(t, n_members))


def cross_fit(
    combiner: Combiner, probs: np.ndarray, objective: Objective, folds: np.ndarray
) -> Iterator[tuple[int, Combiner, np.ndarray, np.ndarray]]:
    """Per fold k in order: (k, the combiner's settings fitted on the other folds, fold k's rows, its
    predictions for them)."""
    settings = combiner.state()
    for k in range(int(folds.max()) + 1):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        fitted = type(combiner).from_state(settings).fit(probs[:, train], objective.subset(train))
        yield k, fitted, test, fitted.predict(probs[:, test])


def predict_out_of_fold(fitted: list[Combiner], probs: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(N, C) predictions of each row by the fold combiner that did not see it."""
    oof = np.empty(probs.shape[1:], dtype=np.float32)
    for k, combiner in enumerate(fitted):
        test = np.flatnonzero(folds == k)
        oof[test] = combiner.predict(probs[:, test])
    return oof


def _trial(config: dict[str, Any], probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, context: dict) -> None:
    from ray import tune

    started = time.perf_counter()
    objective = Objective(labels, context["spec"], context["classes"], context["groups"], context["threads"])
    n_folds = int(folds.max()) + 1
    oof = np.empty(probs.shape[1:], dtype=np.float32)
    done = np.zeros(folds.size, dtype=bool)
    states = []
    for k, fitted, test, predicted in cross_fit(trial_combiner(config), probs, objective, folds):
        oof[test], done[test] = predicted, True
        states.append(fitted.state())
        score = objective(oof) if k + 1 == n_folds else objective.subset(done)(oof[done])
        metrics = {
            "score": score,
            "folds": k + 1,
            "evaluations": objective.evaluations,
            "seconds": time.perf_counter() - started,
        }
        if k + 1 < n_folds:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, FOLDS_FILE).write_text(json.dumps(states), encoding="utf-8")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trial_combiner(config: Mapping[str, Any]) -> Combiner:
    return make_combiner(config["combiner"], dict(config.get("params", {})))


@dataclass(frozen=True)
class Trial:
    combiner: str
    params: dict[str, Any]
    score: float  # out of fold on every row when folds == n_folds, else on the folds it ran
    folds: int  # folds run; fewer than n_folds when ASHA stopped it
    n_folds: int
    seconds: float  # the trial's own compute
    evaluations: int  # objective evaluations
    fold_states: list[dict[str, Any]] | None  # the fitted combiner of each fold, when complete

    @property
    def complete(self) -> bool:
        return self.folds == self.n_folds


def _title(combiner: str, params: Mapping[str, Any]) -> str:
    settings = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return " ".join([combiner, *settings])


def trial_line(trial: Trial) -> str:
    """One line a person can follow: combiner, settings, out-of-fold score, time, work."""
    if trial.complete:
        outcome = f"out-of-fold {trial.score:.4f}"
    else:
        outcome = f"stopped by ASHA after {trial.folds}/{trial.n_folds} folds ({trial.score:.4f} on those)"
    return f"{_title(trial.combiner, trial.params)}: {outcome}, {trial.seconds:.1f} s, {trial.evaluations} evaluations"


def _make_progress_callback(console: Console, total: int, n_folds: int):
    """A Tune callback printing trial_line() for each finished trial above a rich bar over trials."""
    from ray import tune
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class TrialProgress(tune.Callback):
        def __init__(self, console: Console, total: int, n_folds: int) -> None:
            self.n_folds = n_folds
            self.bar = Progress(
                TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
            )
            self.task = self.bar.add_task("trials", total=total)

        def __getstate__(self) -> dict[str, Any]:
            # Tune pickles its run config (callbacks included) into the results folder; the bar and its
            # console (locks, the terminal) belong to this process only.
            return {"n_folds": self.n_folds}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            line = trial_line(_as_trial(trial.config, trial.last_result, self.n_folds))
            self.bar.console.print(line, markup=False)
            self.bar.advance(self.task)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            line = f"{_title(trial.config['combiner'], trial.config['params'])}: failed"
            self.bar.console.print(line, markup=False)
            self.bar.advance(self.task)

    return TrialProgress(console, total, n_folds)


def _as_trial(config: Mapping[str, Any], metrics: Mapping[str, Any], n_folds: int, fold_states=None) -> Trial:
    return Trial(
        combiner=config["combiner"],
        params=dict(config["params"]),
        score=float(metrics["score"]),
        folds=int(metrics["folds"]),
        n_folds=n_folds,
        seconds=float(metrics["seconds"]),
        evaluations=int(metrics["evaluations"]),
        fold_states=fold_states,
    )


def _listed_searcher(configs: list[dict[str, Any]]):
    """A Tune searcher that suggests `configs` in order, then reports itself finished."""
    from ray.tune.search import Searcher

    class Listed(Searcher):
        def __init__(self, configs: list[dict[str, Any]]) -> None:
            super().__init__()
            self.configs = configs
            self.given = 0

        # Ray annotates suggest as returning dict | None, but its own docs and Searcher.FINISHED (a str)
        # say a searcher that has run out returns Searcher.FINISHED.
        def suggest(self, trial_id: str) -> dict[str, Any] | str:  # type: ignore[override]
            if self.given == len(self.configs):
                return Searcher.FINISHED
            self.given += 1
            return self.configs[self.given - 1]

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            """Nothing to learn: the list is fixed."""

    return Listed(configs)


@contextmanager
def _ray_quiet(verbose: bool) -> Iterator[None]:
    """Tune's console engine prints its results folder and a TensorBoard hint even at verbose=0;
    RAY_AIR_NEW_OUTPUT=0 (a documented switch) selects the older engine, silent at verbose=0."""
    if verbose:
        yield
        return
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def run_search(
    probs: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    spec: ObjectiveSpec,
    classes: tuple[str, ...],
    groups: Mapping[str, str],
    config: SearchConfig,
    storage: Path,
    console: Console | None = None,
    verbose: bool = False,
) -> list[Trial]:
    """All trials, the complete ones first, each group best first. Starts Ray with `config.cpus` CPUs
    unless it is already running."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    console = console or Console(quiet=True)
    points = draw_trials(config.combiners, probs.shape[0], config.samples, config.seed)
    n_folds = int(folds.max()) + 1
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=config.cpus,
            include_dashboard=False,
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.ERROR,
        )
    progress = _make_progress_callback(console, len(points), n_folds)
    try:
        trainable = tune.with_parameters(
            _trial,
            probs=probs,
            labels=labels,
            folds=folds,
            context={"spec": spec, "classes": tuple(classes), "groups": dict(groups), "threads": config.cpus},
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": config.cpus}),
            tune_config=tune.TuneConfig(
                metric="score",
                mode="max",
                num_samples=len(points),
                search_alg=_listed_searcher(points),
                # A reused worker keeps its imports and threads; a fresh one costs seconds per trial.
                reuse_actors=True,
                scheduler=ASHAScheduler(time_attr="folds", max_t=n_folds, grace_period=1, reduction_factor=2),
            ),
            run_config=tune.RunConfig(
                storage_path=str(storage.resolve()), name="search", verbose=1 if verbose else 0, callbacks=[progress]
            ),
        )
        with _ray_quiet(verbose), progress.bar:
            results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    trials = []
    # ResultGrid has __len__ and __getitem__ but no __iter__ in its annotations.
    for i in range(len(results)):
        result = results[i]
        if result.error is not None:
            raise RuntimeError(f"search trial {result.config} failed: {result.error}")
        if result.config is None or result.metrics is None:
            raise RuntimeError(f"search trial {i} reported no config or no metrics")
        states = None
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as folder:
                states = json.loads(Path(folder, FOLDS_FILE).read_text(encoding="utf-8"))
        trials.append(_as_trial(result.config, result.metrics, n_folds, states))
    return sorted(trials, key=lambda t: (not t.complete, -t.score))
