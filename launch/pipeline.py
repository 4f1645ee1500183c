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
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from launch.options import add_overrides

STATE_FILE = "pipeline.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="the whole system end to end: shard, tune, train members, synthesise, predict, ensemble, report",
        description="Runs the [pipeline] of CONFIG here; `cxrlt slurm pipeline CONFIG` submits the same steps "
        "as SLURM jobs. Rerunning skips finished steps.",
    )
    parser.add_argument("config", type=Path, help="pipeline TOML (configs/demo.toml)")
    add_overrides(parser, "override a [pipeline] value, e.g. pipeline.out_dir=runs/demo2")
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

    from cxrlt.config import load_config
    from cxrlt.errors import InputError
    from cxrlt.pipeline import TASK_TITLES, check_train_steps, load_pipeline, make_plan, submission_file
    from cxrlt.tracking import PARENT_RUN_ENV, TRACKING_URI_ENV, Tracker, sqlite_uri
    from launch.console import make_console
    from trainers.config import TrainConfig

    console = make_console()
    cfg = load_pipeline(args.config, args.overrides)
    cfg = replace(cfg, out_dir=cfg.out_dir.resolve())
    steps = make_plan(cfg)
    check_train_steps(cfg, steps, lambda path, overrides: load_config(TrainConfig, path, overrides))
    state = State(cfg.out_dir / STATE_FILE)
    if args.dry_run:
        for i, step in enumerate(steps, 1):
            mark = "done" if state.finished(step) else "to run"
            console.print(
                f"[{i}/{len(steps)}] {step.name} ({mark}): cxrlt {shlex.join(step.argv)}", soft_wrap=True, markup=False
            )
        return 0

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    uri = cfg.tracking_uri or sqlite_uri(cfg.out_dir)
    tracker = Tracker(uri)
    started = time.monotonic()
    timings: dict[str, tuple[str, float]] = {}
    rebuilt: set[str] = set()
    name = cfg.name or cfg.out_dir.name
    with tracker.run(
        cfg.experiment,
        name,
        tags={"cxrlt.kind": "pipeline", "config": str(args.config)},
        resume_run_id=state.data.get("run_id"),
    ) as parent:
        run_id = parent.run_id
        if run_id is None:  # Tracker opens no run on a non-zero distributed rank; the pipeline is one process
            raise RuntimeError("the pipeline's MLflow run was not created (not rank 0?)")
        state.data["run_id"] = run_id
        state.save()
        with _environment({PARENT_RUN_ENV: run_id, TRACKING_URI_ENV: uri}):
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
                    raise InputError(
                        f"step {step.name} failed (exit {status}); fix it and rerun `cxrlt pipeline "
                        f"{args.config}`: finished steps are reused"
                    )
                missing = [str(p) for p in step.done if not p.exists()]
                if missing:
                    raise InputError(f"step {step.name} exited 0 but did not write {', '.join(missing)}")
                seconds = time.monotonic() - t0
                state.record(step, seconds)
                rebuilt.add(step.name)
                timings[step.name] = ("ran", seconds)
        wall = time.monotonic() - started
        reports = _write_report_index(cfg, name)
        summary = _summarise(reports)
        parent.log_metrics({**summary, "wall_seconds": wall})
        parent.log_params({"config": str(args.config), "steps": len(steps)})
        for path in (cfg.out_dir / STATE_FILE, args.config, *(submission_file(cfg, s) for s in cfg.submissions)):
            parent.log_artifact(path)
        if parent.client is not None:
            parent.client.log_artifacts(run_id, str(cfg.out_dir / "report"), "report")

    table = Table("step", "", "seconds", title=f"pipeline {name}: {wall / 60:.1f} min")
    for step_name, (what, seconds) in timings.items():
        table.add_row(step_name, what, f"{seconds:.0f}")
    console.print(table)
    for task, metrics in reports.items():
        figures = Table(
            "model",
            "mAP",
            "mAUROC",
            title=f"{TASK_TITLES[task]}: {metrics['split']} split, {len(metrics['classes_scored'])} classes scored",
        )
        figures.add_row("prevalence baseline", f"{metrics['prevalence_mAP']:.4f}", "0.5000")
        for model, values in metrics["models"].items():
            figures.add_row(model, *(_figure(values.get(k)) for k in ("mAP", "mAUROC")))
        console.print(figures)
    console.print(f"report: {cfg.out_dir / 'report' / 'index.html'}", markup=False, soft_wrap=True)
    for sub in cfg.submissions:
        console.print(f"submission {sub.task}: {submission_file(cfg, sub)}", markup=False, soft_wrap=True)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000", markup=False)
    return 0


def _write_report_index(cfg, name: str) -> dict[str, dict[str, Any]]:
    """OUT/report/index.html: one section per task report (report/TASK/), with its figures table; returns
    each task's metrics.json."""
    import html

    from cxrlt.atomic import write_text_atomic
    from cxrlt.pipeline import TASK_TITLES, report_dir, submission_file

    reports, sections = {}, []
    for sub in cfg.submissions:
        folder = report_dir(cfg, sub)
        submission = submission_file(cfg, sub).relative_to(cfg.out_dir)
        if not (folder / "metrics.json").is_file():
            sections.append(
                f"<h2>{TASK_TITLES[sub.task]}</h2><p>Submission <code>{submission}</code>; no labels to "
                "score it here.</p>"
            )
            continue
        metrics = reports[sub.task] = json.loads((folder / "metrics.json").read_text())
        rows = "".join(
            f"<tr><td>{html.escape(model)}</td><td>{_figure(values.get('mAP'))}</td><td>{_figure(values.get('mAUROC'))}</td></tr>"
            for model, values in metrics["models"].items()
        )
        sections.append(
            f"<h2>{TASK_TITLES[sub.task]}</h2><p>{metrics['split']} split, {len(metrics['classes_scored'])} classes "
            f"scored; submission <code>{submission}</code>; <a href='{sub.task}/index.html'>full report</a>.</p>"
            f"<table border=1 cellpadding=4><tr><th>model</th><th>mAP</th><th>mAUROC</th></tr>"
            f"<tr><td>prevalence baseline</td><td>{metrics['prevalence_mAP']:.4f}</td><td>0.5000</td></tr>"
            f"{rows}</table>"
        )
    page = (
        f"<html><head><title>{html.escape(name)}</title></head><body><h1>{html.escape(name)}</h1>"
        f"{''.join(sections)}</body></html>"
    )
    (cfg.out_dir / "report").mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.out_dir / "report" / "index.html", page + "\n")
    return reports


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _summarise(reports: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Every task's figures per model and the prevalence baseline, as MLflow metric names TASK/MODEL/METRIC."""
    summary = {}
    for task, metrics in reports.items():
        summary[f"{task}/prevalence/mAP"] = float(metrics["prevalence_mAP"])
        for model, values in metrics["models"].items():
            for key in ("mAP", "mAUROC"):
                if values.get(key) is not None:
                    summary[f"{task}/{model}/{key}"] = float(values[key])
    return summary
