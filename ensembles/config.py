"""The `cxrlt ensemble build` config tree (TOML + `--set` overrides through cxrlt.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ensembles.combiners import COMBINERS
from ensembles.views import METHODS


@dataclass
class SearchConfig:
    """Ray Tune search: every parameter-free combiner once, then `samples` seeded draws of the others."""

    combiners: list[str] = field(default_factory=lambda: list(COMBINERS))
    samples: int = 12
    cpus: int = 2  # Ray's CPUs; trials run one at a time, each evaluating on this many threads
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [c for c in self.combiners if c not in COMBINERS]
        if unknown:
            raise ValueError(f"unknown combiner(s) {unknown}; known: {list(COMBINERS)}")
        if not self.combiners:
            raise ValueError("combiners must name at least one combiner")


@dataclass
class EnsembleConfig:
    objective: Literal["map", "group_map", "tail_map"] = "map"
    ece_weight: float = 0.0
    folds: int = 5
    seed: int = 0
    search: SearchConfig = field(default_factory=SearchConfig)
    views: list[str] = field(default_factory=lambda: list(METHODS))
    frontal_weight: float = 2.0
    calibration: Literal["none", "temperature", "isotonic"] = "temperature"
    patient_column: str = "subject_id"
    view_column: str = "ViewPosition"
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else SQLite in the current directory
    experiment: str = "ensembles"

    def __post_init__(self) -> None:
        unknown = [v for v in self.views if v not in METHODS]
        if unknown:
            raise ValueError(f"unknown view method(s) {unknown}; known: {list(METHODS)}")
