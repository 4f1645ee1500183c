"""`cxrlt evaluate` on CSV pairs written by hand: the numbers equal scikit-learn's, and bad files are
refused with the line and column at fault."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrlt.labels import CXR_LT_2024_TASK2, NIH_14
from tests.cli import cxrlt


@pytest.fixture
def csv_pair(tmp_path):
    """Task 2 labels and predictions; predictions shuffled, columns reversed, one extra id."""
    rng = np.random.default_rng(7)
    classes = CXR_LT_2024_TASK2.classes
    n = 120
    labels = (rng.random((n, len(classes))) < 0.25).astype(int)
    labels[:, classes.index("Hernia")] = 0  # no positives: must be excluded and named
    labels[rng.random(labels.shape) < 0.05] = -1
    ids = [f"{i:08x}-dicom" for i in range(n)]
    label_frame = pd.DataFrame(labels, columns=classes)
    label_frame.insert(0, "dicom_id", ids)
    label_frame.to_csv(tmp_path / "labels.csv", index=False)
    scores = np.clip(0.4 * (labels == 1) + 0.6 * rng.random(labels.shape), 0, 1).round(2)
    pred = pd.DataFrame(scores, columns=classes)[list(reversed(classes))]
    pred.insert(0, "dicom_id", ids)
    pred = pd.concat([pred, pred.iloc[[0]].assign(dicom_id="not-labelled")]).sample(frac=1, random_state=1)
    pred.to_csv(tmp_path / "pred.csv", index=False)
    return tmp_path, labels, scores


def test_evaluate_matches_sklearn_and_writes_json(csv_pair):
    folder, labels, scores = csv_pair
    out = folder / "result.json"
    run = cxrlt(
        "evaluate",
        "--predictions",
        folder / "pred.csv",
        "--labels",
        folder / "labels.csv",
        "--schema",
        "cxr-lt-2024-task2",
        "--json",
        out,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    classes = CXR_LT_2024_TASK2.classes
    expected_ap, expected_auc = {}, {}
    for j, name in enumerate(classes):
        known = labels[:, j] >= 0
        if len(np.unique(labels[known, j])) == 2:
            expected_ap[name] = average_precision_score(labels[known, j], scores[known, j])
            expected_auc[name] = roc_auc_score(labels[known, j], scores[known, j])
    got = {row["name"]: row for row in result["per_class"]}
    for name, ap in expected_ap.items():
        assert got[name]["ap"] == pytest.approx(ap, abs=1e-9)
        assert got[name]["auroc"] == pytest.approx(expected_auc[name], abs=1e-9)
    assert result["mAP"] == pytest.approx(np.mean(list(expected_ap.values())), abs=1e-9)
    assert result["mAUROC"] == pytest.approx(np.mean(list(expected_auc.values())), abs=1e-9)
    assert result["excluded"] == {"Hernia": "no positive samples"}
    assert result["ignored_prediction_ids"] == 1
    assert set(result["group_mAP"]) == {"head", "medium", "tail"}
    assert "Hernia (no positive samples)" in run.stdout and "Pneumothorax" in run.stdout


def test_groups_from_a_training_label_csv(tmp_path):
    classes = NIH_14.classes
    train = pd.DataFrame(0, index=range(100), columns=classes)
    train.iloc[:20, 0] = 1  # Atelectasis 20% -> head; Cardiomegaly 5% -> medium; the rest 0% -> tail
    train.iloc[:5, 1] = 1
    train.insert(0, "image_id", [f"t{i}" for i in range(100)])
    train.to_csv(tmp_path / "train.csv", index=False)
    rng = np.random.default_rng(0)
    labels = pd.DataFrame((rng.random((40, 14)) < 0.5).astype(int), columns=classes)
    labels.insert(0, "image_id", [f"e{i}" for i in range(40)])
    labels.to_csv(tmp_path / "labels.csv", index=False)
    labels.assign(**{c: rng.random(40) for c in classes}).to_csv(tmp_path / "pred.csv", index=False)
    run = cxrlt(
        "evaluate",
        "--predictions",
        tmp_path / "pred.csv",
        "--labels",
        tmp_path / "labels.csv",
        "--schema",
        "nih-14",
        "--groups-from",
        tmp_path / "train.csv",
        "--json",
        tmp_path / "r.json",
    )
    assert run.returncode == 0, run.stderr
    groups = {row["name"]: row["group"] for row in json.loads((tmp_path / "r.json").read_text())["per_class"]}
    assert groups["Atelectasis"] == "head" and groups["Cardiomegaly"] == "medium" and groups["Hernia"] == "tail"


@pytest.mark.parametrize(
    "target, edit, message",
    [
        (
            "labels",
            lambda t: t.assign(Edema=t["Edema"].astype(object).where(t.index != 3, "maybe")),
            "labels.csv: column 'Edema': label values must be 1, 0, -1 or blank; got line 5 = 'maybe'",
        ),
        (
            "pred",
            lambda t: t.drop(columns=["Pleural Effusion"]).rename(columns={"Edema": "edema"}),
            "pred.csv: missing column(s) 'Edema' (found 'edema'), 'Pleural Effusion'",
        ),
        (
            "pred",
            lambda t: t[~t["dicom_id"].isin(["00000001-dicom", "00000002-dicom"])],
            "pred.csv: no prediction for 2 of 120 labelled ids in",
        ),
        (
            "pred",
            lambda t: t.assign(Mass=t["Mass"].astype(object).where(t["dicom_id"] != "00000003-dicom", "")),
            "pred.csv: column 'Mass': not a finite number: line",
        ),
        (
            "labels",
            lambda t: pd.concat([t, t.iloc[[4]]]),
            "labels.csv: duplicate dicom_id: 00000004-dicom (line 6), 00000004-dicom (line 122)",
        ),
    ],
)
def test_bad_input_is_refused_with_file_line_and_column(csv_pair, target, edit, message):
    folder, _, _ = csv_pair
    path = folder / ("labels.csv" if target == "labels" else "pred.csv")
    edit(pd.read_csv(path)).to_csv(path, index=False)
    run = cxrlt(
        "evaluate",
        "--predictions",
        folder / "pred.csv",
        "--labels",
        folder / "labels.csv",
        "--schema",
        "cxr-lt-2024-task2",
    )
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_schemas_command_lists_and_shows():
    listing = cxrlt("schemas")
    assert listing.returncode == 0 and "cxr-lt-2024-task1" in listing.stdout and "9/15/16" in listing.stdout
    one = cxrlt("schemas", "nih-14")
    assert one.returncode == 0 and "Pleural_Thickening" in one.stdout
    assert cxrlt("schemas", "nope").returncode == 2


@pytest.mark.parametrize("score", [-0.3, 1.7])
def test_a_score_outside_zero_one_names_file_line_and_class(csv_pair, score):
    folder, _, _ = csv_pair
    pred = pd.read_csv(folder / "pred.csv")
    row = int(np.flatnonzero(pred["dicom_id"] == "00000003-dicom")[0])
    pred.loc[row, "Mass"] = score
    pred.to_csv(folder / "pred.csv", index=False)
    run = cxrlt(
        "evaluate",
        "--predictions",
        folder / "pred.csv",
        "--labels",
        folder / "labels.csv",
        "--schema",
        "cxr-lt-2024-task2",
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    expected = f"pred.csv: scores must be probabilities in [0, 1]; got line {row + 2}, class 'Mass' = {score:g}"
    assert expected in run.stderr


def test_a_prediction_file_with_image_id_pairs_with_dicom_id_labels(csv_pair):
    folder, _, _ = csv_pair
    pred = pd.read_csv(folder / "pred.csv").rename(columns={"dicom_id": "image_id"})
    pred.insert(1, "study_id", "s1")  # the project's prediction-file layout
    pred.to_csv(folder / "pred.csv", index=False)
    out = folder / "result.json"
    run = cxrlt(
        "evaluate",
        "--predictions",
        folder / "pred.csv",
        "--labels",
        folder / "labels.csv",
        "--schema",
        "cxr-lt-2024-task2",
        "--json",
        out,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert (result["id_column"], result["prediction_id_column"]) == ("dicom_id", "image_id")
    assert result["ignored_prediction_ids"] == 1
