"""The rich console every subcommand prints through."""

from __future__ import annotations

import sys

from rich.console import Console

# Piped output (logs, CI, SLURM .out files) has no terminal width; rich would fall back to 80 columns
# and wrap the per-class tables into unreadable fragments.
PIPED_WIDTH = 160


def make_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
