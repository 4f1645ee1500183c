"""End to end through the `cxrlt` command on generated members with a patient-disjoint held-out split:
the Ray Tune search beats the plain mean, its out-of-fold score is not optimistic against the held-out
split, the build is an MLflow run with the members as children, and the submission round-trips
through the validator."""

import json

import numpy as np
import pytest

from cxrlt.labels import get_schema
from cxrlt.predictions import read_predictions
from cxrlt.tracking import Tracker
from ensembles.combiners import make_combiner
from ensembles.objective import Objective, ObjectiveSpec
from ensembles.simulate import simulate, write_simulation
from tests.cli import cxrlt

SCHEMA = get_schema("cxr-lt-2024-task2")
N_MEMBERS = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    sim = simulate(5000, N_MEMBERS, SCHEMA.classes, prevalence=np.geomspace(0.3, 0.02, len(SCHEMA.classes)), seed=11)
    patient_number = np.array([int(p[1:]) for p in sim.patient_ids])
    held_out = np.random.default_rng(0).random(patient_number.max() + 1)[patient_number] < 0.4
    dev, test = sim.rows(~held_out), sim.rows(held_out)
    dev_paths, dev_labels = write_simulation(dev, root / "dev", "dev", SCHEMA.name)
    test_paths, test_labels = write_simulation(test, root / "test", "test", SCHEMA.name)
    config = root / "ensemble.toml"
    config.write_text(
        f'folds = 3\ntracking_uri = "sqlite:///{root}/mlruns.db"\nviews = ["none", "mean", "frontal", "learned"]\n'
        '[search]\nsamples = 4\ncombiners = ["mean_prob", "mean_logit", "greedy", "weighted", "stacking"]\n'
    )
    run = cxrlt(
        "ensemble",
        "build",
        "--predictions",
        *dev_paths,
        "--labels",
        dev_labels,
        "--config",
        config,
        "--out",
        root / "build",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    applied = root / "ensemble.test.csv"
    run_apply = cxrlt(
        "ensemble",
        "apply",
        "--recipe",
        root / "build" / "recipe.json",
        "--predictions",
        *test_paths,
        "--views",
        test_labels,
        "--out",
        applied,
    )
    assert run_apply.returncode == 0, run_apply.stdout + run_apply.stderr
    recipe = json.loads((root / "build" / "recipe.json").read_text())
    return {
        "root": root,
        "recipe": recipe,
        "test": test,
        "applied": applied,
        "test_paths": test_paths,
        "test_labels": test_labels,
        "stdout": run.stdout,
        "stderr": run.stderr,
    }


def test_search_beats_the_mean_and_its_out_of_fold_score_is_not_optimistic(built):
    scores, test = built["recipe"]["scores"], built["test"]
    objective = Objective(test.labels, ObjectiveSpec(), SCHEMA.classes, SCHEMA.groups())
    held_out = objective(read_predictions(built["applied"]).probs)
    mean_held_out = objective(make_combiner("mean_prob").predict(test.probs))
    best_single_held_out = max(objective(p) for p in test.probs)
    print(
        f"held-out: searched {held_out:.4f}, mean {mean_held_out:.4f}, best single {best_single_held_out:.4f}; "
        f"out-of-fold {scores['oof_final']:.4f}, in-sample {scores['fitted_combiner_in_sample']:.4f}"
    )
    assert scores["oof_combiner"] > scores["mean_prob"] + 0.01
    assert held_out > mean_held_out + 0.01 and held_out > best_single_held_out
    assert scores["oof_final"] <= held_out + 0.02  # not optimistic, within split-to-split noise
    assert abs(scores["oof_final"] - held_out) < 0.05
    assert scores["fitted_combiner_in_sample"] >= scores["oof_combiner"]


def test_build_shows_a_line_per_trial_and_none_of_rays_own_output(built):
    """Issue #17: a person can follow the search; Ray's banners and warnings only come with --verbose."""
    lines = built["stdout"].splitlines()
    trial_lines = [line for line in lines if line.rstrip().endswith(" evaluations")]  # combiner, score, s, work
    assert len(trial_lines) == 2 + 4 and trial_lines[0].startswith("mean_prob: out-of-fold ")
    assert any(line.startswith("search ") and "6/6" in line for line in lines)
    for banner in ("View detailed results", "TensorBoard", "Pre-set value", "Token authentication", "Started a local"):
        assert banner not in built["stdout"] + built["stderr"], banner


def test_build_is_an_mlflow_run_with_members_and_trials_as_children(built):
    recipe = built["recipe"]
    tracker = Tracker(f"sqlite:///{built['root']}/mlruns.db")
    run = tracker.client.get_run(recipe["mlflow_run_id"])
    assert run.data.metrics["oof_final"] == pytest.approx(recipe["scores"]["oof_final"])
    assert run.data.params["combiner"] == recipe["combiner"]["name"]
    children = tracker.children(recipe["mlflow_run_id"])
    kinds = [c.data.tags["cxrlt.kind"] for c in children]
    assert kinds.count("ensemble-member") == N_MEMBERS
    assert kinds.count("search-trial") == 2 + 4  # the parameter-free combiners once, then 4 samples
    artifacts = {a.path for a in tracker.client.list_artifacts(recipe["mlflow_run_id"])}
    assert {"recipe.json", "config.toml", "build.npz"} <= artifacts


def test_submission_round_trips_through_the_validator(built):
    out = built["root"] / "submission.zip"
    run = cxrlt(
        "submit",
        "write",
        "--task",
        "t2",
        "--ids",
        built["test_labels"],
        "--predictions",
        built["applied"],
        "--out",
        out,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    validated = cxrlt("submit", "validate", "--task", "t2", "--ids", built["test_labels"], out)
    assert validated.returncode == 0, validated.stdout
    wrong_task = cxrlt(
        "submit",
        "write",
        "--task",
        "t1",
        "--ids",
        built["test_labels"],
        "--predictions",
        built["applied"],
        "--out",
        built["root"] / "t1.zip",
    )
    assert wrong_task.returncode == 2 and "no column for task t1 class(es)" in wrong_task.stderr
    assert not (built["root"] / "t1.zip").exists()


def test_report_writes_html_and_plots(built):
    run = cxrlt("ensemble", "report", built["root"] / "build")
    assert run.returncode == 0, run.stderr
    folder = built["root"] / "build" / "report"
    page = (folder / "report.html").read_text()
    for png in ("ap_per_class.png", "weights.png", "reliability.png", "pr_tail.png"):
        assert (folder / png).stat().st_size > 1000 and png in page


def test_apply_refuses_predictions_that_do_not_match_the_recipe(built):
    run = cxrlt(
        "ensemble",
        "apply",
        "--recipe",
        built["root"] / "build" / "recipe.json",
        "--predictions",
        *built["test_paths"][:-1],
        "--out",
        built["root"] / "x.csv",
    )
    assert run.returncode == 2
    assert "missing models ['member04']" in run.stderr
