"""The tune config's search space, searcher and scheduler as Ray Tune objects.

Kept apart from the trial and the study so that choosing Ray's pieces from config is testable without
starting Ray.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm, Searcher

from cxrlt.atomic import atomic_path
from cxrlt.config import ConfigError
from trainers.tune_config import ParamSpace, TuneSettings


def param_space(space: dict[str, ParamSpace], searcher: str) -> dict[str, Any]:
    """{dotted training key: Ray domain}; with the grid searcher every choice is a grid axis."""
    return {key: _domain(param, searcher) for key, param in space.items()}


def _domain(param: ParamSpace, searcher: str) -> Any:
    if param.type == "uniform":
        return tune.uniform(*param.bounds)
    if param.type == "loguniform":
        return tune.loguniform(*param.bounds)
    return tune.grid_search(param.values) if searcher == "grid" else tune.choice(param.values)


def search_algorithm(settings: TuneSettings) -> Searcher | SearchAlgorithm:
    """random and grid: Ray's variant generator (grid axes come from the space); tpe: Optuna's TPE."""
    if settings.searcher != "tpe":
        return BasicVariantGenerator(random_state=settings.seed)
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("tune.searcher = 'tpe' needs optuna: install the tune extra (pip install 'cxrlt[tune]')")
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=settings.metric, mode=settings.direction, sampler=TPESampler(seed=settings.seed))


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA whose rung records survive a killed study.

    Ray pickles the scheduler once, when the study starts, and never saves its state again, so a
    restored study would judge its remaining trials against empty rungs and stop none of them. This one
    writes its state to `state_file` after every decision and reads it back before its first one.
    """

    def __init__(self, state_file: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_file = state_file
        self.loaded = False

    def _load_once(self) -> None:
        if not self.loaded:
            self.loaded = True
            if self.state_file.is_file():
                self.restore(str(self.state_file))

    def _persist(self) -> None:
        with atomic_path(self.state_file) as tmp:
            self.save(str(tmp))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load_once()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        self._persist()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()


def scheduler(settings: TuneSettings, epochs: int, state_file: Path) -> TrialScheduler:
    """ASHA on the per-epoch reports (one Tune iteration = one epoch), or FIFO (no early stopping);
    `state_file`: where ASHA keeps its rungs for a resumed study."""
    if settings.scheduler == "fifo":
        return FIFOScheduler()
    max_t = settings.max_t or epochs
    if settings.grace_period > max_t:
        raise ConfigError(f"tune.grace_period = {settings.grace_period} exceeds max_t = {max_t} epochs")
    return ResumableASHA(
        state_file,
        time_attr="training_iteration",
        metric=settings.metric,
        mode=settings.direction,
        max_t=max_t,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
        # A trial that reaches the last epoch ends by itself, finishing its run (result.json, MLflow);
        # ASHA stops it at max_t only when that comes before the last epoch.
        stop_last_trials=max_t < epochs,
    )
