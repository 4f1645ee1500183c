"""The `cxrlt tune` config: which training config a trial starts from, the search space, the study settings.

A tune config is its own TOML file, because the training loader is strict and owns every table of a
training config. It names the base training config and layers changes over it:

    base = "configs/train-starter-tiny.toml"   # relative paths: to the working directory, as typed
    [train.data]                                # any training key, overriding the base file
    steps_per_epoch = 4
    [run]                                       # the study: folder, MLflow experiment and run name
    out_dir = "runs/tune-starter"
    [tune]                                      # metric, searcher, scheduler, trial resources
    num_samples = 8
    [space."loss.gamma_neg"]                    # one table per searched training key
    type = "uniform"
    low = 1.0
    high = 6.0

`--set` overrides starting with `train.` go to the training config, the others to this tree. Every
searched key is checked against TrainConfig (existence, type and validation) at its bounds and choices,
so a typo fails before Ray starts.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cxrlt.config import ConfigError, apply_overrides, from_dict, load_config
from trainers.config import TrainConfig

TRAIN_PREFIX = "train."
# What the trainer reports after every epoch (trainers.loop.dev_metrics) and Tune can optimise.
REPORTED_METRICS = ("mAP", "mAUROC", "mF1", "mECE", "group_average_mAP", "loss", "mAP_head", "mAP_medium", "mAP_tail")
MINIMISED_METRICS = ("loss", "mECE")


@dataclass
class StudyRunConfig:
    """out_dir: the study folder (Ray's storage, trial run folders, results): on a cluster, a path every
    node sees. name: the MLflow parent run's name (default: out_dir's name). experiment / tracking_uri:
    empty takes the base training config's."""

    out_dir: Path = Path("runs/tune")
    name: str = ""
    experiment: str = ""
    tracking_uri: str = ""


@dataclass
class TuneSettings:
    """metric: a dev metric the trainer reports each epoch; mode: "max"/"min" (empty: min for loss and
    mECE, else max). scheduler "asha" stops trials early at rungs of `grace_period` epochs growing by
    `reduction_factor` up to max_t (0: schedule.epochs); "fifo" runs every trial to the end. searcher
    "random" samples the space, "grid" takes every combination of `choice` values, "tpe" is Optuna's
    TPE (needs the `tune` extra). nproc_per_trial > 1 runs each trial as a torchrun job of that many
    ranks; cpus/gpus_per_trial are what Ray reserves for one trial."""

    metric: str = "mAP"
    mode: Literal["", "max", "min"] = ""
    num_samples: int = 8
    scheduler: Literal["asha", "fifo"] = "asha"
    searcher: Literal["random", "grid", "tpe"] = "random"
    grace_period: int = 1
    reduction_factor: int = 2
    max_t: int = 0
    max_concurrent: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    nproc_per_trial: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in REPORTED_METRICS:
            raise ValueError(f"metric must be one of {REPORTED_METRICS}, got {self.metric!r}")
        if self.num_samples < 1 or self.grace_period < 1 or self.reduction_factor < 2 or self.max_t < 0:
            raise ValueError("num_samples and grace_period must be >= 1, reduction_factor >= 2, max_t >= 0")
        if self.max_concurrent < 0 or self.cpus_per_trial <= 0 or self.gpus_per_trial < 0 or self.nproc_per_trial < 1:
            raise ValueError("max_concurrent >= 0, cpus_per_trial > 0, gpus_per_trial >= 0, nproc_per_trial >= 1")

    @property
    def direction(self) -> str:
        return self.mode or ("min" if self.metric in MINIMISED_METRICS else "max")


@dataclass
class ParamSpace:
    """One searched key: uniform / loguniform over [low, high], or choice among `values`."""

    type: Literal["uniform", "loguniform", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.type == "choice":
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError("type 'choice' takes a non-empty `values` list and no low/high")
            return
        if self.low is None or self.high is None or self.values or not self.low < self.high:
            raise ValueError(f"type {self.type!r} takes low < high and no `values`")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("type 'loguniform' needs low > 0")

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a uniform / loguniform key, which __post_init__ made sure are both set."""
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type!r} has no low / high bounds")
        return self.low, self.high

    def candidates(self) -> list[Any]:
        """Values that together exercise the key's type and validation: the bounds, or every choice."""
        return list(self.values) if self.type == "choice" else [self.low, self.high]


@dataclass
class TuneConfig:
    base: Path
    train: dict[str, Any] = field(default_factory=dict)
    run: StudyRunConfig = field(default_factory=StudyRunConfig)
    tune: TuneSettings = field(default_factory=TuneSettings)
    space: dict[str, ParamSpace] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedTune:
    """The tune config and the base training config (file + [train] + train.* overrides) as a TOML dict."""

    tune: TuneConfig
    train_data: dict[str, Any]

    def trial_config(self, values: dict[str, Any]) -> TrainConfig:
        """The training config of a trial: the base with each searched dotted key set to its value."""
        data = copy.deepcopy(self.train_data)
        for key, value in values.items():
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return from_dict(TrainConfig, data, origin=lambda key: f"search space {sorted(values)}")


def load_tune_config(path: Path, overrides: Sequence[str] = ()) -> LoadedTune:
    """Load and check a tune config: its own keys, the base training config and every searched key."""
    train_sets = [o.removeprefix(TRAIN_PREFIX) for o in overrides if o.strip().startswith(TRAIN_PREFIX)]
    own_sets = [o for o in overrides if not o.strip().startswith(TRAIN_PREFIX)]
    cfg = load_config(TuneConfig, path, own_sets)
    try:
        with open(cfg.base, "rb") as f:
            train_data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: base = {str(cfg.base)!r}: no such training config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: base = {cfg.base}: invalid TOML: {e}") from None
    _merge(train_data, cfg.train)
    apply_overrides(TrainConfig, train_data, train_sets)
    loaded = LoadedTune(cfg, train_data)
    from_dict(TrainConfig, train_data, origin=lambda key: f"{cfg.base} + [train] of {path}")
    if not cfg.space:
        raise ConfigError(f'{path}: no [space."KEY"] table: nothing to search')
    for key, param in cfg.space.items():
        apply_overrides(TrainConfig, {}, [f"{key}=0"])  # the key exists in the training config tree
        for value in param.candidates():
            try:
                loaded.trial_config({key: value})
            except ConfigError as e:
                raise ConfigError(
                    f"{path}: space.{key!r}: value {value!r} is not a valid training config: {e}"
                ) from None
    if cfg.tune.searcher == "grid":
        continuous = [k for k, p in cfg.space.items() if p.type != "choice"]
        if continuous:
            raise ConfigError(f"{path}: tune.searcher = 'grid' takes only type = 'choice' keys; {continuous} are not")
    return loaded


def _merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    """Deep-merge TOML tables: `changes` wins key by key, tables merge recursively."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def absolute_paths(cfg: Any, root: Path) -> Any:
    """`cfg` with every relative Path field made absolute against `root`: trials run in other processes
    and on other nodes, whose working directory is not the one the user typed the paths in."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Path) and not value.is_absolute():
            changes[f.name] = root / value
        elif dataclasses.is_dataclass(value):
            changes[f.name] = absolute_paths(value, root)
        elif isinstance(value, list) and any(dataclasses.is_dataclass(v) for v in value):
            # Tables in a list (data.sources) hold paths too.
            changes[f.name] = [absolute_paths(v, root) if dataclasses.is_dataclass(v) else v for v in value]
    return dataclasses.replace(cfg, **changes)
