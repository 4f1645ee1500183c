"""`cxrlt slurm KIND CONFIG [--set ...] [--dry-run] [-- ARGS]` and `cxrlt slurm status [JOB]`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from launch.options import add_overrides

KIND_HELP = {
    "train": "multi-node training: one srun task per node runs cxrlt train (torchrun)",
    "predict": "cxrlt predict ARGS (after --) on one node",
    "tune": "a Ray cluster across the allocation, then cxrlt tune",
    "synth": "cxrlt synth train|sample (the action after --)",
    "ensemble": "cxrlt ensemble ACTION ARGS (after --)",
    "pipeline": "the steps of CONFIG's [pipeline] (as `cxrlt pipeline` runs them), one job each, afterok",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("slurm", help="run cxrlt commands as SLURM jobs")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, text in KIND_HELP.items():
        sub = kinds.add_parser(
            kind,
            help=text,
            description="Renders an sbatch script from CONFIG's [slurm] table and submits it; prints the job id.",
        )
        _add_job_options(sub)
        sub.add_argument("config", type=Path, help="the command's TOML with a [slurm] table")
        # Python 3.11's argparse cannot take `CONFIG [options] -- ARGS` with a nargs="*" positional
        # (it is matched, empty, right after CONFIG), so the rest is split at "--" in run_submit.
        sub.add_argument(
            "rest",
            nargs=argparse.REMAINDER,
            metavar="[--set ...] [--dry-run] [-- ARGS]",
            help="ARGS (after --) go to the command itself",
        )
        sub.set_defaults(run=run_submit)
    show = kinds.add_parser("status", help="state of a submitted job or chain")
    show.add_argument("job", nargs="?", help="job id or submission folder (default: the newest submission)")
    show.add_argument("--jobs-dir", type=Path, default=Path("slurm-jobs"), help="where submissions are")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=run_status)


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    add_overrides(parser, "slurm.* keys configure the job; the others go to the command")
    parser.add_argument("--dry-run", action="store_true", help="print the script(s); submit nothing")


def run_submit(args: argparse.Namespace) -> int:
    from cluster.plan import make_plan
    from cluster.submit import dry_run_commands, submit

    rest = list(args.rest)
    cut = rest.index("--") if "--" in rest else len(rest)
    options = argparse.ArgumentParser(prog=f"cxrlt slurm {args.kind} {args.config}")
    _add_job_options(options)
    options.parse_args(rest[:cut], namespace=args)
    plan = make_plan(args.kind, args.config, args.overrides, rest[cut + 1 :], Path.cwd())
    if args.kind == "pipeline":
        # As `cxrlt pipeline` does: every member's training config loads before a job is queued.
        from cxrlt.config import load_config
        from cxrlt.pipeline import check_train_steps, load_pipeline
        from cxrlt.pipeline import make_plan as pipeline_plan
        from trainers.config import TrainConfig

        pipeline = load_pipeline(args.config, [o for o in args.overrides if o.strip().startswith("pipeline.")])
        check_train_steps(pipeline, pipeline_plan(pipeline), lambda path, sets: load_config(TrainConfig, path, sets))
    if args.dry_run:
        for line in dry_run_commands(plan):
            print(f"would run: {line}", file=sys.stderr)
        sys.stdout.write("".join(job.script for job in plan.jobs))
        return 0
    record = submit(plan)
    for step in record.steps:
        print(f"submitted {step.name} as job {step.job_id}")
    if record.parent_run_id is not None:
        print(f"MLflow parent run: {record.parent_run_id}")
    print(f"submission folder: {record.dir}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cluster.status import chain_state, status
    from launch.console import make_console

    record, tasks = status(args.job, args.jobs_dir)
    state = chain_state(tasks)
    if args.json:
        print(json.dumps({"state": state, "dir": record.dir, "tasks": [asdict(t) for t in tasks]}, indent=2))
        return 0
    table = Table(
        "step", "job", "state", "reason", "exit", "restarts", "nodes", title=f"{record.kind} {record.dir} — {state}"
    )
    for t in tasks:
        table.add_row(t.step, t.job_id, t.state, t.reason, t.exit_code, t.restarts, t.nodes)
    make_console().print(table)
    return 0
