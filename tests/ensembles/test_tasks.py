"""Per-task scoring and submissions: `ensemble compare --task t2` scores the 26 Task 2 classes on the gold
subset its label CSV lists; `submit write` averages several files' scores class by class (the zero-shot
members that fill Task 3)."""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from cxrlt.errors import InputError
from cxrlt.labels import TASK_SCHEMAS
from cxrlt.predictions import PredictionMeta, write_predictions
from ensembles.submission import write_submission
from tests.cli import cxrlt

T1, T2, T3 = (TASK_SCHEMAS[t].classes for t in ("t1", "t2", "t3"))
N = 120
IDS = [f"img{i:04d}" for i in range(N)]


def _predictions(path, classes, probs, schema="cxr-lt-2024-task1"):
    meta = PredictionMeta(classes=tuple(classes), schema=schema, split="dev", model=path.stem)
    return write_predictions(path, IDS, [f"s{i // 3:04d}" for i in range(N)], probs.astype(np.float32), meta)


def _label_csv(path, ids, classes, labels):
    frame = pd.DataFrame(labels, columns=list(classes))
    frame.insert(0, "subject_id", [f"1{i:07d}" for i in range(len(ids))])
    frame.insert(0, "dicom_id", ids)
    frame.to_csv(path, index=False)
    return path


def test_compare_scores_a_tasks_classes_on_the_images_its_labels_list(tmp_path):
    rng = np.random.default_rng(0)
    truth = (rng.random((N, len(T1))) < 0.3).astype(int)
    perfect = _predictions(tmp_path / "perfect.csv", T1, np.where(truth == 1, 0.8, 0.2))
    gold = np.arange(0, N, 2)  # the gold subset: every other image
    t2_columns = [T1.index(c) for c in T2]
    # Alphabetical columns, as the real development_labeled_task2.csv; the task's classes are matched by name.
    order = sorted(T2)
    labels = _label_csv(
        tmp_path / "gold.csv", [IDS[i] for i in gold], order, truth[np.ix_(gold, [T1.index(c) for c in order])]
    )
    out = tmp_path / "report"
    run = cxrlt("ensemble", "compare", "--task", "t2", "--members", perfect, "--labels", labels, "--out", out)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == gold.size and set(metrics["classes_scored"]) <= set(T2)
    assert len(metrics["classes_scored"]) == sum(
        truth[np.ix_(gold, t2_columns)].any(0) & ~truth[np.ix_(gold, t2_columns)].all(0)
    )
    assert metrics["models"]["perfect"]["mAP"] == pytest.approx(1.0)
    # Without --task the label CSV must hold every predicted image and class: it does not.
    assert (
        cxrlt("ensemble", "compare", "--members", perfect, "--labels", labels, "--out", tmp_path / "r2").returncode == 2
    )


def test_a_submission_from_several_files_is_their_per_class_mean(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.random((N, len(T3))), rng.random((N, len(T3)))
    files = [_predictions(tmp_path / n, T3, p, "cxr-lt-2024-task3") for n, p in (("a.csv", a), ("b.csv", b))]
    ids = _label_csv(tmp_path / "ids.csv", IDS[::-1], [], np.zeros((N, 0)))
    report = write_submission(files, "t3", ids, tmp_path / "t3.zip")
    assert report.ok and report.n_rows == N
    with zipfile.ZipFile(tmp_path / "t3.zip") as archive:
        written = pd.read_csv(archive.open("submission.csv"))
    assert list(written.columns) == ["dicom_id", *T3] and written["dicom_id"].tolist() == IDS[::-1]
    np.testing.assert_allclose(written[list(T3)].to_numpy(), ((a + b) / 2)[::-1], atol=1e-6)
    with pytest.raises(InputError, match="no column for task t1"):
        write_submission(files, "t1", ids, tmp_path / "t1.zip")
