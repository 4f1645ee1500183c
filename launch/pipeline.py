"""`cxrlt pipeline CONFIG`: run the end-to-end plan (cxrlt/pipeline.py) on this machine, step by step.

Each step is one `cxrlt` command: training, tuning, synthesis and the ensemble search run in their own
process (torchrun, Ray and DeepSpeed own theirs); the short ones (labels, predict, apply, submit,
report) run in this process to save a start-up each. A step is skipped when its output files exist and
its command line is the one recorded in OUT/pipeline.json when it finished; a step whose inputs were
just rebuilt runs again. An interrupted step continues (--resume) where its command supports it.
Everything is logged to MLflow under one parent run, which a rerun reopens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

STATE_FILE = "pipeline.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="the whole system end to end: shard, tune, train members, synthesise, predict, ensemble, report",
        description="Runs the [pipeline] of CONFIG here; `cxrlt slurm pipeline CONFIG` submits the same steps "
        "as SLURM jobs. Rerunning skips finished steps.",
    )
    parser.add_argument("config", type=Path, help="pipeline TOML (configs/demo.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a [pipeline] value, e.g. pipeline.out_dir=runs/demo2")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the steps and whether each would run")
    parser.set_defaults(run=run)


class State:
    """OUT/pipeline.json: the MLflow parent run and, per finished step, its command line and time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"steps": {}}

    def finished(self, step) -> bool:
        recorded = self.data["steps"].get(step.name, {}).get("argv")
        return recorded == list(step.argv) and all(p.exists() for p in step.done)

    def record(self, step, seconds: float) -> None:
        self.data["steps"][step.name] = {"argv": list(step.argv), "seconds": round(seconds, 1)}
        self.save()

    def save(self) -> None:
        from cxrlt.atomic import write_text_atomic

        write_text_atomic(self.path, json.dumps(self.data, indent=1) + "\n")


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """The commands run in this process read these as the subprocesses do."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_step(step) -> int:
    """Resumable commands always get --resume: on a fresh folder it is a plain start, after an
    interruption it continues from the checkpoint instead of refusing to overwrite it."""
    from launch.main import main as cxrlt_main

    argv = [*step.argv, *(["--resume"] if step.resume else [])]
    if not step.heavy:
        return cxrlt_main(argv)
    executable = Path(sys.executable).with_name("cxrlt")
    return subprocess.run([str(executable), *argv]).returncode


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cxrlt.errors import InputError
    from cxrlt.pipeline import load_pipeline, make_plan
    from cxrlt.tracking import PARENT_RUN_ENV, TRACKING_URI_ENV, Tracker, sqlite_uri
    from launch.console import make_console

    console = make_console()
    cfg = load_pipeline(args.config, args.overrides)
    cfg = replace(cfg, out_dir=cfg.out_dir.resolve())
    steps = make_plan(cfg)
    state = State(cfg.out_dir / STATE_FILE)
    if args.dry_run:
        for i, step in enumerate(steps, 1):
            mark = "done" if state.finished(step) else "to run"
            console.print(f"[{i}/{len(steps)}] {step.name} ({mark}): cxrlt {shlex.join(step.argv)}", soft_wrap=True, markup=False)
        return 0

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    uri = cfg.tracking_uri or sqlite_uri(cfg.out_dir)
    tracker = Tracker(uri)
    started = time.monotonic()
    timings: dict[str, tuple[str, float]] = {}
    rebuilt: set[str] = set()
    name = cfg.name or cfg.out_dir.name
    with tracker.run(cfg.experiment, name, tags={"cxrlt.kind": "pipeline", "config": str(args.config)},
                     resume_run_id=state.data.get("run_id")) as parent:  # fmt: skip
        state.data["run_id"] = parent.run_id
        state.save()
        with _environment({PARENT_RUN_ENV: parent.run_id, TRACKING_URI_ENV: uri}):
            for i, step in enumerate(steps, 1):
                header = f"[{i}/{len(steps)}] {step.name}"
                if state.finished(step) and not rebuilt.intersection(step.after):
                    console.print(f"[dim]{header}: done earlier, reused[/dim]")
                    timings[step.name] = ("reused", 0.0)
                    continue
                console.rule(header)
                console.print(f"$ cxrlt {shlex.join(step.argv)}", soft_wrap=True, markup=False)
                t0 = time.monotonic()
                status = _run_step(step)
                if status != 0:
                    raise InputError(f"step {step.name} failed (exit {status}); fix it and rerun `cxrlt pipeline "
                                     f"{args.config}`: finished steps are reused")  # fmt: skip
                missing = [str(p) for p in step.done if not p.exists()]
                if missing:
                    raise InputError(f"step {step.name} exited 0 but did not write {', '.join(missing)}")
                seconds = time.monotonic() - t0
                state.record(step, seconds)
                rebuilt.add(step.name)
                timings[step.name] = ("ran", seconds)
        wall = time.monotonic() - started
        summary = _summarise(cfg.out_dir)
        parent.log_metrics({**summary, "wall_seconds": wall})
        parent.log_params({"config": str(args.config), "steps": len(steps)})
        for path in (cfg.out_dir / STATE_FILE, cfg.out_dir / "submission.zip", args.config):
            parent.log_artifact(path)
        if parent.client is not None:
            parent.client.log_artifacts(parent.run_id, str(cfg.out_dir / "report"), "report")

    table = Table("step", "", "seconds", title=f"pipeline {name}: {wall / 60:.1f} min")
    for step_name, (what, seconds) in timings.items():
        table.add_row(step_name, what, f"{seconds:.0f}")
    console.print(table)
    figures = Table("model", "test mAP", "test mAUROC", title="held-out test split")
    for key in sorted(k for k in summary if k.endswith("/mAP")):
        model = key.removesuffix("/mAP")
        figures.add_row(model, f"{summary[key]:.4f}", f"{summary.get(model + '/mAUROC', float('nan')):.4f}")
    console.print(figures)
    console.print(f"report: {cfg.out_dir / 'report' / 'index.html'}")
    console.print(f"submission: {cfg.out_dir / 'submission.zip'}")
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    return 0


def _summarise(out_dir: Path) -> dict[str, float]:
    """Test figures of every model and the prevalence baseline, from the report's metrics.json."""
    metrics = json.loads((out_dir / "report" / "metrics.json").read_text())
    summary = {"prevalence/mAP": float(metrics["prevalence_mAP"])}
    for model, values in metrics["models"].items():
        for key in ("mAP", "mAUROC"):
            if values.get(key) is not None:
                summary[f"{model}/{key}"] = float(values[key])
    return summary
