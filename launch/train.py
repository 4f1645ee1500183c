"""`cxrlt train CONFIG [--set k=v] [--nproc N] [--nnodes M --rdzv-endpoint H:P --rdzv-id ID] [--resume]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from launch.options import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train members on shards with a DeepSpeed engine (image, study or noisy-student stage)",
        description="Checks the config and shards, then trains in this process (one rank) or through "
        "torchrun. SIGTERM/SIGUSR1 checkpoint and exit 75 (requeue); --resume continues from the latest "
        "checkpoint and reuses finished members.",
    )
    parser.add_argument("config", type=Path, help="training config TOML (see configs/)")
    add_overrides(parser)
    parser.add_argument("--nproc", type=int, default=1, help="ranks on this node (default 1)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes (each runs its own `cxrlt train`)")
    parser.add_argument("--rdzv-endpoint", help="HOST:PORT of the first node, for --nnodes > 1")
    parser.add_argument("--rdzv-id", default="cxrlt", help="rendezvous id shared by the nodes (the job id)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cxrlt.config import load_config
    from trainers.config import TrainConfig
    from trainers.launcher import Layout, run_torchrun
    from trainers.stages import check_inputs

    cfg = load_config(TrainConfig, args.config, args.overrides)
    check_inputs(cfg)  # bad input fails here, before torchrun and any model exist
    layout = Layout(args.nproc, args.nnodes, args.rdzv_endpoint, args.rdzv_id)
    worker_args = [str(args.config), *[a for o in args.overrides for a in ("--set", o)]]
    worker_args += ["--resume"] if args.resume else []
    if layout.in_process:
        from trainers.worker import main as worker_main

        return worker_main(worker_args)
    return run_torchrun(layout, "trainers.worker", worker_args, Path(cfg.run.out_dir))
