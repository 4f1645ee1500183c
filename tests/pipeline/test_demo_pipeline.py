"""`cxrlt pipeline configs/demo.toml` end to end on the embedded data, reduced to minutes: every step is
the real command (2-rank DeepSpeed members, Ray Tune, diffusers, Ray ensemble search), the outputs are
real files, MLflow holds one parent run over everything, and a rerun reuses every finished step."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import mlflow

import subprocess

from cxrlt.pipeline import load_pipeline, make_plan
from tests.cli import CXRLT

ROOT = Path(__file__).resolve().parents[2]

MEMBERS = (
    '[{name="convnext", resolutions=[64], set=["model.backbone.name=convnext_atto"]},'
    ' {name="vit", resolutions=[64], set=["model.backbone.name=vit_tiny_patch16_224"]},'
    ' {name="convnext-synth", resolutions=[64], synthetic=true, set=["model.backbone.name=convnext_atto"]}]'
)


def overrides(out: Path) -> list[str]:
    """configs/demo.toml at test size: 64 px shards, 2 tune trials, 1 short epoch per member."""
    return [
        f"pipeline.out_dir={out}",
        'pipeline.shard.args=["--max-size", "64", "--split", "0.7,0.15,0.15", "--schema", "cxr-lt-2024-task1"]',
        'pipeline.tune.set=["tune.num_samples=2", "train.schedule.epochs=1", "train.data.steps_per_epoch=3"]',
        'pipeline.train.set=["schedule.epochs=1", "data.steps_per_epoch=4"]',
        f"pipeline.members={MEMBERS}",
        'pipeline.synth.set=["train.steps=8", "sample.per_class=4", "sample.ddim_steps=4", "report.folds=2"]',
        'pipeline.ensemble.set=["search.samples=2", "folds=3"]',
    ]


def run_pipeline(out: Path) -> subprocess.CompletedProcess:
    command = [str(CXRLT), "pipeline", "configs/demo.toml", *[w for o in overrides(out) for w in ("--set", o)]]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1500)


def test_demo_pipeline_runs_end_to_end_then_reuses_every_step(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = run_pipeline(out)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    # Every member and the ensemble were scored on the held-out test split against the prevalence baseline.
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"convnext-64", "vit-64", "convnext-synth-64", "ensemble"}
    assert metrics["split"] == "test" and 0 < metrics["prevalence_mAP"] < 1
    assert all(0 <= m["mAP"] <= 1 for m in metrics["models"].values())
    page = (out / "report" / "index.html").read_text()
    for figure in ("summary.png", "ap_vs_prevalence.png", "pr_curves.png", "reliability.png", "weights.png"):
        assert figure in page and (out / "report" / figure).is_file()
    assert "Synthetic tail-class samples" in page
    # The submission is a CXR-LT task 1 file that the validator accepts, one row per test image.
    validated = subprocess.run([str(CXRLT), "submit", "validate", "--task", "t1", "--ids", str(out / "labels" / "test.csv"),
                                str(out / "submission.zip")], capture_output=True, text=True)  # fmt: skip
    assert validated.returncode == 0, validated.stdout + validated.stderr
    with zipfile.ZipFile(out / "submission.zip") as archive:
        rows = archive.read("submission.csv").decode().splitlines()
    assert len(rows) - 1 == len((out / "labels" / "test.csv").read_text().splitlines()) - 1
    assert "report: " in first.stdout and "mlflow ui --backend-store-uri sqlite:///" in first.stdout

    # One MLflow parent run holds every command's run, in its own experiment.
    state = json.loads((out / "pipeline.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    parent = client.get_run(state["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["ensemble/mAP"] == metrics["models"]["ensemble"]["mAP"]
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    kinds = {c.data.tags.get("mlflow.runName", "") for c in children}
    assert any(k.startswith("synth-train") for k in kinds) and any(k.startswith("ensemble-") for k in kinds), kinds
    assert {"convnext", "vit", "convnext-synth", "tune"} <= kinds, kinds
    steps = len(make_plan(load_pipeline(ROOT / "configs/demo.toml", overrides(out))))
    assert len(state["steps"]) == steps == 20

    # A rerun reuses every step and reopens the same parent run.
    again = run_pipeline(out)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert again.stdout.count("done earlier, reused") == steps
    assert json.loads((out / "pipeline.json").read_text())["run_id"] == state["run_id"]
