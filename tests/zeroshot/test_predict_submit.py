"""`cxrlt predict --classes/--descriptions` writes a valid prediction file; the Task 3 names flow into a
CodaLab submission that the validator accepts; bad requests fail before any rank starts."""

from __future__ import annotations

import argparse

import pytest

from cxrlt.data.shardset import read_index
from cxrlt.errors import InputError
from cxrlt.labels import CXR_LT_2024_TASK3
from cxrlt.models.factory import ModelConfig, build_model
from cxrlt.models.heads import HeadConfig
from cxrlt.models.saved import save_model
from cxrlt.predictions import read_predictions
from tests.cli import cxrlt
from trainers.predict import check_request
from trainers.request import PredictRequest, add_request_arguments, request_from

pytestmark = pytest.mark.timeout(600)
TASK3 = ",".join(CXR_LT_2024_TASK3.classes)


def test_request_with_classes_and_descriptions_round_trips(tmp_path):
    request = PredictRequest(
        tmp_path / "m.pt",
        tmp_path / "s",
        "test",
        tmp_path / "p.csv",
        classes=("Bulla", "Hilum"),
        descriptions=tmp_path / "d.toml",
    )
    parser = add_request_arguments(argparse.ArgumentParser())
    assert request_from(parser.parse_args(request.to_args())) == request
    plain = PredictRequest(tmp_path / "m.pt", tmp_path / "s", "test", tmp_path / "p.csv")
    assert request_from(parser.parse_args(plain.to_args())) == plain


def test_task3_zero_shot_prediction_becomes_a_valid_submission(held_out_run, starter64, tmp_path, cli):
    preds = tmp_path / "t3.csv"
    result = cxrlt(
        "predict",
        held_out_run.run_dir / "best.pt",
        "--shards",
        starter64,
        "--split",
        "test",
        "--out",
        preds,
        "--classes",
        TASK3,
        "--descriptions",
        "cxr-lt-2024-task3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_predictions(preds)
    assert table.meta.classes == CXR_LT_2024_TASK3.classes and table.meta.schema == "cxr-lt-2024-task3"
    assert len(table.image_ids) == 52 and ((table.probs > 0) & (table.probs < 1)).all()
    assert table.probs.std(axis=0).min() > 0  # image-dependent scores, not a constant per class
    ids = tmp_path / "ids.csv"
    ids.write_text("dicom_id\n" + "\n".join(table.image_ids[::-1]) + "\n", encoding="utf-8")
    submission = tmp_path / "t3.zip"
    status, _, err = cli("submit", "write", "--task", "t3", "--ids", ids, "--predictions", preds, "--out", submission)
    assert status == 0, err
    status, stdout, _ = cli("submit", "validate", "--task", "t3", "--ids", ids, submission)
    assert status == 0 and "valid t3 submission, 52 rows" in stdout


def test_other_names_need_a_text_query_model(starter64, tmp_path, cli):
    cfg = ModelConfig(head=HeadConfig(name="linear"))
    classes = read_index(starter64).classes
    fixed = save_model(
        tmp_path / "fixed.pt",
        build_model(cfg, classes),
        cfg,
        classes,
        "nih-14",
        {"size": 64, "channels": 1, "mean": [0.5], "std": [0.25]},
    )
    request = PredictRequest(fixed, starter64, "test", tmp_path / "p.csv", classes=("Bulla",))
    with pytest.raises(InputError, match="--classes: .*fixed-class head"):
        check_request(request)
    status, _, err = cli(
        "predict", fixed, "--shards", starter64, "--out", tmp_path / "p.csv", "--descriptions", "nih-14"
    )
    assert status == 2 and "--descriptions nih-14" in err


def test_duplicate_names_are_refused(held_out_run, starter64, tmp_path, cli):
    status, _, err = cli(
        "predict",
        held_out_run.run_dir / "best.pt",
        "--shards",
        starter64,
        "--out",
        tmp_path / "p.csv",
        "--classes",
        "Bulla,Hilum,Bulla",
    )
    assert status == 2 and "['Bulla'] more than once" in err
