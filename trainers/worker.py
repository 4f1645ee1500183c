"""The per-rank entry point: `python -m trainers.worker CONFIG [--set k=v ...] [--resume]`.

torchrun (or srun, or `cxrlt train` itself for one process) starts one of these per rank. It loads
the config, trains, and exits 0, 2 for bad input, or REQUEUE_EXIT_CODE after a preemption checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cxrlt.config import load_config
from cxrlt.errors import InputError
from cxrlt.tracking import is_rank_zero
from trainers import distributed
from trainers.config import TrainConfig
from trainers.stages import run_training


def worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainers.worker")
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = worker_parser().parse_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        results = run_training(cfg, resume=args.resume)
    except (InputError, FileNotFoundError, FileExistsError) as e:
        print(f"cxrlt train: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    if is_rank_zero():
        for result in results:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.dev_metrics.items() if k in ("mAP", "mAUROC", "loss"))
            print(f"{result.best_model}: best epoch {result.best_epoch}, dev {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
