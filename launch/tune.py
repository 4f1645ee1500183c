"""`cxrlt tune CONFIG [--set k=v] [--resume]`: a Ray Tune study of training trials (see trainers.tune_study)."""

from __future__ import annotations

import argparse
from pathlib import Path

from launch.options import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search training config values (loss weights, lr, ...) with Ray Tune, each trial a training run",
        description="Runs the trials of CONFIG's search space (ASHA on the per-epoch dev metric by default), "
        "tracked as an MLflow parent run with one child run per trial; writes results.csv, objective.png and "
        "best.toml (a config for cxrlt train) into run.out_dir. --resume continues a killed study.",
    )
    parser.add_argument("config", type=Path, help="tune config TOML naming its base training config (see configs/)")
    add_overrides(parser, "a tune config key, or train.KEY for the training config")
    parser.add_argument("--resume", action="store_true", help="continue the study in run.out_dir")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trainers.tune_study import run_study

    summary = run_study(args.config, args.overrides, resume=args.resume)
    values = ", ".join(
        f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in summary.best_values.items()
    )
    print(f"best trial {summary.best_trial}: {summary.best_score:.4f} with {values}")
    return 0
