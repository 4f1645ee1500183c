"""Command-line options several `cxrlt` commands share."""

from __future__ import annotations

import argparse


def add_overrides(parser: argparse.ArgumentParser, help: str = "override a config key (repeatable)") -> None:
    """`--set KEY=VALUE`, repeatable, collected in `args.overrides` (cxrlt.config applies them in order)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)
