"""`cxrlt predict MODEL --shards DIR --split S --out preds.csv [--tta ...] [--nproc N]`."""

from __future__ import annotations

import argparse

from trainers.request import add_request_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="score a shard split with a trained-model file; write a prediction file + sidecar",
        description="Distributed over --nproc ranks; every sample is scored once, rows in split order.",
    )
    add_request_arguments(parser)
    parser.add_argument("--nproc", type=int, default=1, help="ranks on this node (default 1)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trainers.launcher import Layout, run_torchrun
    from trainers.predict import check_request, main
    from trainers.request import request_from

    request = request_from(args)
    check_request(request)  # bad input fails here, before any rank starts
    if args.nproc == 1:
        return main(request.to_args())
    return run_torchrun(Layout(nproc=args.nproc), "trainers.predict", request.to_args(), args.out.parent)
