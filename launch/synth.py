"""`cxrlt synth train|sample|report`: rare-class image synthesis (logic in synth/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="synth config TOML (configs/synth-*.toml); default: built-in")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="diffusion synthesis of tail-class images")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    train = actions.add_parser(
        "train",
        help="train (or resume) the label-conditioned diffusion model on image shards",
        description="Rerun the same command to resume; exits 75 after a stop request (SIGUSR1/SIGTERM).",
    )
    train.add_argument("--shards", required=True, type=Path, help="real image-level shard set")
    train.add_argument("--out", required=True, type=Path, help="run folder (checkpoint.pt, model.pt, grids/)")
    _config_arguments(train)
    train.set_defaults(run=run_train)

    sample = actions.add_parser("sample", help="generate tail-class candidates, filter them, write synthetic shards")
    sample.add_argument("--model", required=True, type=Path, help="synth model file (RUN/model.pt)")
    sample.add_argument("--shards", required=True, type=Path, help="the real shard set the model was trained on")
    sample.add_argument("--out", required=True, type=Path, help="synthetic shard set folder")
    sample.add_argument("--classifier", type=Path, help="trained classifier file for the filter (sets filter.classifier)")
    _config_arguments(sample)
    sample.set_defaults(run=run_sample)

    report = actions.add_parser("report", help="counts, per-class grids, filter pass rates, real-vs-synthetic AUC")
    report.add_argument("--shards", required=True, type=Path, help="the real shard set")
    report.add_argument("--synthetic", required=True, type=Path, help="folder written by `cxrlt synth sample`")
    report.add_argument("--out", required=True, type=Path, help="report folder (report.html, report.json, PNGs)")
    _config_arguments(report)
    report.set_defaults(run=run_report)


def _config(args: argparse.Namespace):
    from cxrlt.config import load_config
    from synth.config import SynthConfig

    return load_config(SynthConfig, args.config, args.overrides)


def run_train(args: argparse.Namespace) -> int:
    from synth.train import train

    status = train(_config(args), args.shards, args.out)
    print(f"{args.out}: " + ("model.pt written" if status == 0 else f"stopped for requeue (exit {status}); rerun to resume"))
    return status


def run_sample(args: argparse.Namespace) -> int:
    from synth.sample import sample

    if args.classifier is not None:
        args.overrides = [*args.overrides, f"filter.classifier={args.classifier}"]
    result = sample(_config(args), args.model, args.shards, args.out, command=["cxrlt", *sys.argv[1:]])
    kept = sum(c.kept for c in result.candidates)
    print(f"{args.out}: {kept} of {len(result.candidates)} candidates kept ({result.drawn} drawn in this run)")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from synth.report import write_report

    print(f"wrote {write_report(_config(args), args.shards, args.synthetic, args.out)}")
    return 0
