"""The real recipe end to end at its smallest size: `cxrlt rehearsal make` writes a MIMIC-CXR-LT-shaped tree
from the embedded images, and `cxrlt pipeline` runs configs/rehearsal.toml (configs/mimic-cxr-lt-2024.toml
with sizes and paths changed) extended once more only to shrink epochs, trials and samples. Every step is
the real command: DeepSpeed members (ML-Decoder image members, the study member with indication and
vitals, the noisy student on the external NIH set, the text-query member), Ray Tune, diffusers, the Ray
ensemble search, and three submissions. A rerun reuses every step."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from cxrlt.pipeline import load_pipeline, make_plan
from tests.cli import CXRLT

ROOT = Path(__file__).resolve().parents[2]

# Sizes only: one resolution per member, a few steps per epoch, two trials, a few diffusion steps.
SMALLEST = f"""extends = "{ROOT / "configs" / "rehearsal.toml"}"

[pipeline.tune]
set = ["tune.num_samples=2", "train.schedule.epochs=1", "train.data.steps_per_epoch=2"]

[pipeline.train]
nproc = 1
set = ["schedule.epochs=1", "data.steps_per_epoch=3"]

[[pipeline.members]]
name = "convnext-s"
resolutions = [64]

[[pipeline.members]]
name = "effnetv2-s"
resolutions = [64]

[[pipeline.members]]
name = "study-convnext-s"
set = ["schedule.epochs=1"]

[[pipeline.members]]
name = "student-convnext-s"
set = ["schedule.epochs=1"]

[pipeline.synth]
set = ["train.steps=8", "sample.per_class=4", "sample.ddim_steps=4", "report.folds=2"]

[pipeline.ensemble]
set = ["search.samples=2", "folds=3"]
"""


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(CXRLT), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> dict:
    """The rehearsal recipe run once in a folder of its own (its relative paths resolve there)."""
    work = tmp_path_factory.mktemp("rehearsal")
    (work / "configs").symlink_to(ROOT / "configs")  # the recipes name their step configs as configs/...
    made = _run(["rehearsal", "make", "--out", "runs/rehearsal-data", "--quiet"], work)
    assert made.returncode == 0, made.stdout + made.stderr
    (work / "smallest.toml").write_text(SMALLEST)
    first = _run(["pipeline", "smallest.toml"], work)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-6000:]
    return {"work": work, "out": work / "runs" / "rehearsal", "data": work / "runs" / "rehearsal-data", "first": first}


def test_three_submissions_validate_and_cover_every_id(rehearsal: dict) -> None:
    out, data = rehearsal["out"], rehearsal["data"] / "cxr-lt-2024"
    id_files = {"t1": "test_labeled_task1.csv", "t2": "development_labeled_task2.csv", "t3": "development_task3.csv"}
    for task, name in id_files.items():
        checked = _run(
            ["submit", "validate", "--task", task, "--ids", data / name, out / "submissions" / f"{task}.zip"], ROOT
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        with zipfile.ZipFile(out / "submissions" / f"{task}.zip") as archive:
            submitted = pd.read_csv(archive.open("submission.csv"), dtype={"dicom_id": str})
        assert sorted(submitted["dicom_id"]) == sorted(pd.read_csv(data / name, dtype=str)["dicom_id"])


def test_study_members_predict_every_image_of_long_studies(rehearsal: dict) -> None:
    test = pd.read_csv(rehearsal["data"] / "cxr-lt-2024" / "test_labeled_task1.csv", dtype=str)
    sizes = test.groupby("study_id")["dicom_id"].transform("size")
    long_studies = test[sizes >= 5]
    assert set(sizes[sizes >= 5]) == {5, 6}  # the rehearsal puts studies of 5 and 6 images in every split
    predicted = pd.read_csv(rehearsal["out"] / "predictions" / "test" / "study-convnext-s-64.csv", dtype=str)
    assert set(long_studies["dicom_id"]) <= set(predicted["image_id"])
    assert len(predicted) == len(test)


def test_the_ensemble_is_applied_with_views_and_every_task_is_reported(rehearsal: dict) -> None:
    out = rehearsal["out"]
    state = json.loads((out / "pipeline.json").read_text())
    for split in ("dev", "test"):
        argv = state["steps"][f"ensemble-apply-{split}"]["argv"]
        assert argv[argv.index("--views") + 1] == str(out / "labels" / f"{split}.csv")
    for task, classes in (("t1", 40), ("t2", 26), ("t3", 5)):
        metrics = json.loads((out / "report" / task / "metrics.json").read_text())
        assert 0 < len(metrics["classes_scored"]) <= classes and 0 < metrics["prevalence_mAP"] < 1
        assert all(0 <= m["mAP"] <= 1 for m in metrics["models"].values())
        if task != "t3":
            # 10 scored members: clip, the weak-label member and the chain's MIMIC member included; the
            # chain's public pretraining member is not one of them.
            assert "ensemble" in metrics["models"] and len(metrics["models"]) == 1 + 10
            assert not any(name.startswith("public-") for name in metrics["models"])
    index = (out / "report" / "index.html").read_text()
    assert all(f"{t}/index.html" in index for t in ("t1", "t2", "t3"))


def test_pseudo_labels_changed_the_students_targets(rehearsal: dict) -> None:
    out = rehearsal["out"]
    student = out / "members" / "student-convnext-s" / "res-64"
    assert len(list(student.glob("student-*/pseudo_labels.npz"))) == 2
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    rounds = [r for r in runs if "/student-" in r.data.tags.get("mlflow.runName", "")]
    assert len(rounds) == 2, [r.data.tags.get("mlflow.runName") for r in runs]
    for run in rounds:
        # The share of target entries the teacher filled: the external NIH images leave 25 of 40 classes
        # unknown, and the CXR-LT rows none, so with half of each batch external it is well above zero.
        filled = [m.value for m in client.get_metric_history(run.info.run_id, "train/pseudo_filled")]
        assert filled and all(v > 0.1 for v in filled), filled


def test_one_mlflow_parent_in_a_model_training_experiment_and_a_rerun_reuses_every_step(rehearsal: dict) -> None:
    work, out = rehearsal["work"], rehearsal["out"]
    state = json.loads((out / "pipeline.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    parent = client.get_run(state["run_id"])
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.status == "FINISHED" and "t1/ensemble/mAP" in parent.data.metrics
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = {c.data.tags.get("mlflow.runName", "") for c in children}
    assert {"convnext-s", "study-convnext-s", "student-convnext-s", "textquery-convnext-s", "tune"} <= names, names
    steps = make_plan(load_pipeline(work / "smallest.toml"))
    assert len(state["steps"]) == len(steps)

    again = _run(["pipeline", "smallest.toml"], work)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert again.stdout.count("done earlier, reused") == len(steps)
    assert json.loads((out / "pipeline.json").read_text())["run_id"] == state["run_id"]


def test_the_pretraining_chain_starts_a_mimic_member_from_a_model_trained_on_three_public_sets(
    rehearsal: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from cxrlt.config import load_config
    from cxrlt.labels import CHEXPERT_14, CXR_LT_2024_TASK1, NIH_14, VINDR_CXR, canonical_name
    from cxrlt.models.crossschema import saved_backbone_state
    from cxrlt.models.saved import load_model
    from trainers.config import TrainConfig
    from trainers.modelinit import build_member_model

    out = rehearsal["out"]
    public_file = out / "members" / "public-effnetv2-l" / "res-64" / "best.pt"
    public = load_model(public_file)
    union = {canonical_name(c, s.naming) for s in (NIH_14, CHEXPERT_14, VINDR_CXR) for c in s.classes}
    assert public.schema == "union" and set(public.classes) == union
    assert not (out / "predictions" / "dev" / "public-effnetv2-l-64.csv").exists()
    # The MIMIC member's run was configured to start from the public model, and that start is the public
    # model's (EMA) backbone, bit for bit, under a fresh head for the task's 40 classes ...
    monkeypatch.chdir(rehearsal["work"])  # the recipe's relative paths
    member_cfg = load_config(TrainConfig, out / "members" / "effnetv2-l" / "res-64" / "config.toml")
    assert member_cfg.stage.init_from == public_file
    started = build_member_model(member_cfg, CXR_LT_2024_TASK1.classes).backbone.model.state_dict()
    pretrained = saved_backbone_state(public)
    assert started.keys() == pretrained.keys() and all(torch.equal(started[k], pretrained[k]) for k in started)
    # ... and it then trained on MIMIC from there.
    member = load_model(out / "members" / "effnetv2-l" / "res-64" / "best.pt")
    assert member.classes == CXR_LT_2024_TASK1.classes
    assert not all(torch.equal(v, pretrained[k]) for k, v in saved_backbone_state(member).items())
