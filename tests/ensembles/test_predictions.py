"""The prediction-file contract: round trips in CSV and Parquet, and faults named by file/line/column."""

import json

import numpy as np
import pytest

from cxrlt.errors import InputError
from cxrlt.predictions import PredictionMeta, read_predictions, sidecar_path, write_predictions

CLASSES = ("Atelectasis", "Cardiomegaly", "Edema")


def write(tmp_path, suffix=".csv", probs=None):
    probs = np.random.default_rng(0).random((4, 3)).astype(np.float32) if probs is None else probs
    meta = PredictionMeta(
        classes=CLASSES,
        schema="cxr-lt-2024-task1",
        split="dev",
        model="m1",
        tta="hflip",
        mlflow_run_id="abc",
        config_hash="123",
    )
    path = write_predictions(tmp_path / f"m1.dev{suffix}", ["a", "b", "c", "d"], ["s1", "s1", "s2", "s3"], probs, meta)
    return path, probs


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_keeps_ids_probabilities_and_provenance(tmp_path, suffix):
    path, probs = write(tmp_path, suffix)
    loaded = read_predictions(path)
    assert list(loaded.image_ids) == ["a", "b", "c", "d"]
    assert list(loaded.study_ids) == ["s1", "s1", "s2", "s3"]
    np.testing.assert_allclose(loaded.probs, probs, atol=1e-6)
    assert loaded.meta.classes == CLASSES and loaded.meta.tta == "hflip" and loaded.meta.mlflow_run_id == "abc"
    assert json.loads(sidecar_path(path).read_text())["split"] == "dev"


def test_columns_are_matched_by_name_not_position(tmp_path):
    path, probs = write(tmp_path)
    text = path.read_text().splitlines()
    header = text[0].split(",")
    order = [0, 1, 4, 2, 3]  # move Edema before Atelectasis
    path.write_text("\n".join(",".join(row.split(",")[i] for i in order) for row in text) + "\n")
    assert [header[i] for i in order][2] == "Edema"
    np.testing.assert_allclose(read_predictions(path).probs, probs, atol=1e-6)


def test_missing_sidecar_is_named(tmp_path):
    path, _ = write(tmp_path)
    sidecar_path(path).unlink()
    with pytest.raises(InputError, match=r"m1\.dev\.csv: no sidecar m1\.dev\.csv\.json"):
        read_predictions(path)


def test_probability_out_of_range_names_line_and_column(tmp_path):
    path, _ = write(tmp_path)
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[3] = "1.5"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"line 4, column 'Cardiomegaly': 1\.5 is not in \[0, 1\]"):
        read_predictions(path)


def test_table_columns_must_match_the_sidecar(tmp_path):
    path, _ = write(tmp_path)
    meta = json.loads(sidecar_path(path).read_text())
    meta["classes"] = ["Atelectasis", "Cardiomegaly"]
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"column\(s\) \['Edema'\] are not in the sidecar"):
        read_predictions(path)


def test_duplicate_image_ids_are_refused(tmp_path):
    meta = PredictionMeta(classes=CLASSES, schema="x", split="dev", model="m")
    path = write_predictions(tmp_path / "m.csv", ["a", "a"], ["s", "s"], np.zeros((2, 3)), meta)
    with pytest.raises(InputError, match="duplicate image_id"):
        read_predictions(path)
