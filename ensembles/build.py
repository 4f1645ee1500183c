"""`ensemble build`: from development predictions and labels to a recipe, with honest scores.

Steps, each scored on pooled out-of-fold predictions over patient-grouped folds:
  1. Ray Tune picks the combiner and its hyperparameters (ensembles.search), each trial fitted fold by
     fold. The recipe's combiner is the chosen trial's fold combiners merged (Combiner.average), not a
     refit on all rows: the steps below are fitted on those fold combiners' out-of-fold outputs, so they
     are applied to the combiners that produced them (issue #16 item 6), and no fit is repeated.
  2. The combiner's out-of-fold predictions feed the view-aggregation choice (learned aggregation is
     fitted inside the folds); the recipe's aggregation is fitted on all of them.
  3. Calibration is fitted inside the folds on those predictions, for the mECE and mF1@0.5 before and
     after, out of fold; the recipe's calibrator is fitted on all of them.
`oof_final` scores what the recipe does to the out-of-fold predictions: its one calibrator on every row.
A per-class temperature keeps each class's ranking, so for it oof_final is oof_after_views (the
cross-fitted calibrations of step 3, one temperature per fold, would rank rows of different folds
against each other, which no recipe does); isotonic steps were fitted on these rows, which may flatter
the ties they make. The mECE term of an objective with ece_weight > 0 is the cross-fitted one.
Outputs in the build folder: recipe.json, config.toml, build.npz (the report's arrays), search/ (Tune's
own files). The build is one MLflow run whose children are the members (tagged with each member's own
training run id) and the search trials.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from cxrlt.atomic import atomic_path
from cxrlt.config import config_hash, to_dict, write_config
from cxrlt.errors import InputError
from cxrlt.labels import get_schema
from cxrlt.metrics import evaluate
from cxrlt.tracking import Run, Tracker, default_uri
from ensembles.calibration import Calibrator
from ensembles.combiners import make_combiner
from ensembles.config import EnsembleConfig
from ensembles.folds import out_of_fold, patient_folds
from ensembles.objective import Objective, ObjectiveSpec
from ensembles.recipe import Recipe, member_record
from ensembles.search import Trial, predict_out_of_fold, run_search
from ensembles.store import MemberStack, load_labels, load_members, load_views
from ensembles.views import Studies, ViewAggregator, ViewMethod, as_view_method


@dataclass(frozen=True)
class BuildResult:
    recipe: Recipe
    recipe_path: Path
    trials: list[Trial]


def _choose_views(
    config: EnsembleConfig,
    oof: np.ndarray,
    studies: Studies,
    views: np.ndarray,
    objective: Objective,
    folds: np.ndarray,
) -> tuple[ViewMethod, dict[str, float], np.ndarray]:
    scores: dict[str, float] = {}
    predictions: dict[ViewMethod, np.ndarray] = {}
    for method in map(as_view_method, config.views):

        def fit_predict(train: np.ndarray, test: np.ndarray, method: ViewMethod = method) -> np.ndarray:
            agg = ViewAggregator(method, config.frontal_weight).fit(
                oof[train], studies.subset(train), views[train], objective.subset(train)
            )
            return agg.predict(oof[test], studies.subset(test), views[test])

        predictions[method] = out_of_fold(folds, fit_predict, oof.shape[1])
        scores[method] = objective(predictions[method])
    best = max(predictions, key=lambda method: scores[method])
    return best, scores, predictions[best]


def build(
    config: EnsembleConfig,
    member_paths: list[str | os.PathLike],
    labels_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    views_path: str | os.PathLike | None = None,
    console: Console | None = None,
    verbose: bool = False,
) -> BuildResult:
    """Search, fit and score a recipe; `console` gets the progress, `verbose` lets Ray's own output through."""
    console = console or Console(quiet=True)
    out_dir = Path(out_dir)
    stack = load_members(member_paths)
    try:
        schema = get_schema(stack.schema)
    except KeyError as e:
        raise InputError(f"{stack.members[0].path}: {e.args[0]}") from None
    groups = schema.groups()
    table = load_labels(labels_path, stack.image_ids, stack.classes, config.patient_column)
    needs_views = "frontal" in config.views
    views = (
        load_views(views_path or labels_path, stack.image_ids, config.view_column)
        if needs_views or views_path is not None
        else np.full(stack.image_ids.size, "", dtype=object)
    )
    spec = ObjectiveSpec(config.objective, config.ece_weight)
    objective = Objective(table.labels, spec, stack.classes, groups)
    folds = patient_folds(table.patient_ids, config.folds, config.seed)
    member_scores = {m.name: objective(p) for m, p in zip(stack.members, stack.probs)}
    console.print(
        f"{len(stack.members)} members, {stack.image_ids.size} images, {len(stack.classes)} classes; "
        f"best single {max(member_scores.values()):.4f}"
    )

    started = time.perf_counter()
    trials = run_search(
        stack.probs,
        table.labels,
        folds,
        spec,
        stack.classes,
        groups,
        config.search,
        out_dir / "search",
        console,
        verbose,
    )
    search_seconds = time.perf_counter() - started
    best = trials[0]
    stopped = sum(not t.complete for t in trials)
    console.print(
        f"search: {len(trials)} trials ({stopped} stopped early by ASHA), "
        f"{sum(t.evaluations for t in trials)} objective evaluations, {search_seconds:.0f} s; "
        f"best {best.combiner} {best.params} out-of-fold {best.score:.4f}",
        markup=False,
    )
    if best.fold_states is None:
        raise RuntimeError(
            f"the best trial ({best.combiner} {best.params}) ran {best.folds}/{best.n_folds} folds and has no fitted "
            "folds to build the recipe from"
        )
    fitted = [make_combiner(best.combiner, state) for state in best.fold_states]
    combiner = type(fitted[0]).average(fitted)
    oof = predict_out_of_fold(fitted, stack.probs, folds)
    oof_score = objective(oof)
    fitted_score = objective(combiner.predict(stack.probs))

    studies = Studies.of(stack.study_ids)
    view_method, view_scores, viewed = _choose_views(config, oof, studies, views, objective, folds)
    aggregator = ViewAggregator(view_method, config.frontal_weight).fit(oof, studies, views, objective)

    def calibrate(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return Calibrator(config.calibration).fit(viewed[train], table.labels[train]).predict(viewed[test])

    calibrated = np.clip(out_of_fold(folds, calibrate, viewed.shape[1]), 0, 1)
    calibrator = Calibrator(config.calibration).fit(viewed, table.labels)
    final = np.clip(calibrator.predict(viewed), 0, 1)
    before = evaluate(table.labels, viewed, stack.classes, groups)
    after = evaluate(table.labels, calibrated, stack.classes, groups)
    mean_oof = objective(make_combiner("mean_prob").predict(stack.probs))
    scores = {
        "oof_combiner": oof_score,
        "fitted_combiner_in_sample": fitted_score,
        "oof_after_views": view_scores[view_method],
        "oof_final": objective(final, calibrated=calibrated),
        "best_single_member": max(member_scores.values()),
        "mean_prob": mean_oof,
        "oof_mECE_before_calibration": before.mECE,
        "oof_mECE_after_calibration": after.mECE,
        "oof_mF1_before_calibration": before.mF1,
        "oof_mF1_after_calibration": after.mF1,
        **{f"oof_views_{k}": v for k, v in view_scores.items()},
    }
    chash = config_hash(config)
    recipe = Recipe(
        schema=stack.schema,
        classes=list(stack.classes),
        members=[member_record(m.meta) for m in stack.members],
        combiner={"name": combiner.name, "state": combiner.state()},
        views=aggregator.state(),
        calibration=calibrator.state(),
        objective={"kind": spec.kind, "ece_weight": spec.ece_weight},
        scores={k: float(v) for k, v in scores.items()},
        config_hash=chash,
    )
    _save_report_arrays(out_dir / "build.npz", stack, objective, combiner, table.labels, viewed, calibrated)
    write_config(config, out_dir / "config.toml")
    tracker = Tracker(config.tracking_uri or default_uri("."))
    with tracker.run(config.experiment, f"ensemble-{chash}", tags={"cxrlt.kind": "ensemble"}) as run:
        recipe.mlflow_run_id = run.run_id
        recipe_path = recipe.write(out_dir / "recipe.json")
        _log_build(tracker, run, config, stack, recipe, trials, member_scores, search_seconds)
        for path in (recipe_path, out_dir / "config.toml", out_dir / "build.npz"):
            run.log_artifact(path)
    return BuildResult(recipe=recipe, recipe_path=recipe_path, trials=trials)


def _save_report_arrays(
    path: Path,
    stack: MemberStack,
    objective: Objective,
    combiner,
    labels: np.ndarray,
    raw: np.ndarray,
    calibrated: np.ndarray,
) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            classes=np.array(stack.classes),
            members=np.array(stack.names),
            member_ap=np.stack([objective.per_class_ap(p) for p in stack.probs]),
            ensemble_ap=objective.per_class_ap(raw),
            weights=combiner.member_weights(len(stack.members), len(stack.classes)),
            labels=labels,
            oof_raw=raw,
            oof_calibrated=calibrated,
            combiner=np.array(combiner.name),
        )


def _flatten(prefix: str, value) -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(f"{prefix}.{k}" if prefix else k, v))
        return out
    return {prefix: value}


def _log_build(
    tracker: Tracker,
    run: Run,
    config: EnsembleConfig,
    stack: MemberStack,
    recipe: Recipe,
    trials: list[Trial],
    member_scores: dict[str, float],
    search_seconds: float,
) -> None:
    weights = make_combiner(recipe.combiner["name"], recipe.combiner["state"]).member_weights(
        len(stack.members), len(stack.classes)
    )
    run.log_params(
        {**_flatten("", to_dict(config)), "combiner": recipe.combiner["name"], "views": recipe.views["method"]}
    )
    run.log_metrics({k: v for k, v in recipe.scores.items() if np.isfinite(v)})
    run.log_metrics(
        {
            "search_seconds": search_seconds,
            "search_trials": len(trials),
            "search_trials_stopped": sum(not t.complete for t in trials),
            "search_evaluations": sum(t.evaluations for t in trials),
        }
    )
    run.set_tags({"cxrlt.schema": stack.schema, "cxrlt.split": stack.split})
    for m, member in enumerate(stack.members):
        tags = {"cxrlt.kind": "ensemble-member", "cxrlt.model": member.name, "cxrlt.predictions": str(member.path)}
        if member.meta.mlflow_run_id:
            tags["cxrlt.source_run_id"] = member.meta.mlflow_run_id
        with tracker.run(config.experiment, member.name, parent_run_id=run.run_id, tags=tags) as child:
            child.log_metrics({"dev_score": member_scores[member.name], "mean_weight": float(weights[m].mean())})
    for i, trial in enumerate(trials):
        name = f"trial-{i:03d}-{trial.combiner}"
        with tracker.run(
            config.experiment, name, parent_run_id=run.run_id, tags={"cxrlt.kind": "search-trial"}
        ) as child:
            child.log_params({"combiner": trial.combiner, **trial.params})
            child.log_metrics(
                {
                    "oof_score": trial.score,
                    "folds": trial.folds,
                    "seconds": trial.seconds,
                    "evaluations": trial.evaluations,
                }
            )
