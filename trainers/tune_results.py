"""What a finished study leaves: the trials table (CSV), the objective over trials (PNG), the best config.

The table has one row per trial in creation order: trial id, status, the searched values, epochs
reported, whether the scheduler stopped it early, and the objective's last and best value. The best
trial is the one with the best per-epoch value of the objective; its config is the base training
config with its values set, ready for `cxrlt train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; a cluster node has no display
import matplotlib.pyplot as plt
import pandas as pd
from ray.tune import ResultGrid

from cxrlt.atomic import atomic_path

RESULTS_CSV = "results.csv"
OBJECTIVE_PNG = "objective.png"
BEST_CONFIG = "best.toml"


@dataclass(frozen=True)
class StudySummary:
    table: pd.DataFrame
    best_trial: str
    best_values: dict[str, Any]
    best_score: float


def trials_table(grid: ResultGrid, keys: list[str], metric: str, mode: str, max_epochs: int) -> pd.DataFrame:
    rows = []
    # ResultGrid iterates through __getitem__ only (no __iter__), which type checkers don't follow.
    for result in (grid[i] for i in range(len(grid))):
        history = result.metrics_dataframe
        scores = history[metric].dropna() if history is not None and metric in history else pd.Series(dtype=float)
        epochs = int((result.metrics or {}).get("epoch", 0))
        rows.append(
            {
                # A trial that failed before its first report has no metrics: its folder names it.
                "trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name,
                "status": "ERROR" if result.error is not None else "DONE",
                **{key: (result.config or {}).get(key) for key in keys},
                "epochs": epochs,
                "stopped_early": result.error is None and epochs < max_epochs,
                f"last_{metric}": scores.iloc[-1] if len(scores) else math.nan,
                f"best_{metric}": (scores.max() if mode == "max" else scores.min()) if len(scores) else math.nan,
            }
        )
    return pd.DataFrame(rows).sort_values("trial_id", kind="stable").reset_index(drop=True)


def summarise(table: pd.DataFrame, keys: list[str], metric: str, mode: str) -> StudySummary:
    scored = table.dropna(subset=[f"best_{metric}"])
    if scored.empty:
        raise RuntimeError(f"no trial reported {metric}: see the trials' errors in {RESULTS_CSV}")
    best = scored.loc[scored[f"best_{metric}"].idxmax() if mode == "max" else scored[f"best_{metric}"].idxmin()]
    values = {key: _plain(best[key]) for key in keys}
    return StudySummary(table, str(best["trial_id"]), values, float(best[f"best_{metric}"]))


def _plain(value: Any) -> Any:
    """numpy scalars from the table back to Python values (TOML and from_dict take only those)."""
    return value.item() if hasattr(value, "item") else value


def write_table(table: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def plot_objective(table: pd.DataFrame, metric: str, mode: str, path: Path) -> Path:
    """Each trial's best value (stopped-early trials hollow) and the best so far, in trial order."""
    scores = table[f"best_{metric}"]
    running = scores.cummax() if mode == "max" else scores.cummin()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    order = range(1, len(table) + 1)
    early = table["stopped_early"].astype(bool)
    ax.scatter([i for i, e in zip(order, early) if not e], scores[~early], label="ran to max epochs")
    ax.scatter(
        [i for i, e in zip(order, early) if e], scores[early], facecolors="none", edgecolors="C1", label="stopped early"
    )
    ax.step(list(order), running, where="post", color="C2", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"dev {metric} (best epoch)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
