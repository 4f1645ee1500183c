"""Entry point of the `cxrlt` command: one subcommand per module listed in SUBCOMMANDS.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets `run` (a function
of the parsed arguments returning an exit status). Heavy imports (torch, ray, ...) happen inside `run`,
so `cxrlt --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cxrlt import __version__
from cxrlt.errors import InputError

SUBCOMMANDS = (
    "launch.schemas",
    "launch.shard",
    "launch.labels",
    "launch.rehearsal",
    "launch.evaluate",
    "launch.submit",
    "launch.ensemble",
    "launch.train",
    "launch.export_backbone",
    "launch.predict",
    "launch.zeroshot",
    "launch.contrastive",
    "launch.synth",
    "launch.slurm",
    "launch.tune",
    "launch.pipeline",
)

EXIT_INPUT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrlt",
        description="Train, tune and ensemble long-tailed multi-label chest X-ray classifiers (CXR-LT).",
    )
    parser.add_argument("--version", action="version", version=f"cxrlt {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (InputError, FileNotFoundError) as e:
        print(f"cxrlt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
