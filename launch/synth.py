"""`cxrlt synth train|sample|report CONFIG [--set k=v]`: rare-class image synthesis (logic in synth/).

Every input and output path is in the config (data.shards, run.out_dir, sample.*, filter.classifier),
so `cxrlt slurm synth` runs these commands with nothing but the config and its overrides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.options import add_overrides

ACTIONS = {
    "train": "train (or with --resume continue) the label-conditioned diffusion model on data.shards",
    "sample": "generate tail-class candidates, filter them with filter.classifier, write synthetic shards",
    "report": "per-class counts and grids, filter pass rates, real-vs-synthetic discriminator AUC",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="diffusion synthesis of tail-class images")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in ACTIONS.items():
        p = actions.add_parser(action, help=text, description=text)
        p.add_argument("config", type=Path, help="synth config TOML (configs/synth-*.toml)")
        add_overrides(p)
        if action == "train":
            p.add_argument("--resume", action="store_true", help="continue from run.out_dir/checkpoint.pt")
        p.set_defaults(run=globals()[f"run_{action}"])


def _config(args: argparse.Namespace):
    from cxrlt.config import load_config
    from synth.config import SynthConfig

    return load_config(SynthConfig, args.config, args.overrides)


def run_train(args: argparse.Namespace) -> int:
    from synth.train import train

    cfg = _config(args)
    status = train(cfg, resume=args.resume)
    done = "model.pt written" if status == 0 else f"stopped for requeue (exit {status}); rerun with --resume"
    print(f"{cfg.run.out_dir}: {done}")
    return status


def run_sample(args: argparse.Namespace) -> int:
    from synth.sample import sample

    cfg = _config(args)
    result = sample(cfg, command=["cxrlt", *sys.argv[1:]])
    kept = sum(c.kept for c in result.candidates)
    print(f"{cfg.synthetic_dir}: {kept} of {len(result.candidates)} candidates kept ({result.drawn} drawn in this run)")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from synth.report import write_report

    print(f"wrote {write_report(_config(args))}")
    return 0
