"""Stages and prediction through the real CLI: predict on any rank count, the study stage started from
an image checkpoint, two noisy-student rounds, one member per resolution, and bad input refused early."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.sources.starter import read_starter
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import get_schema
from cxrlt.models.saved import load_model
from cxrlt.predictions import read_predictions
from cxrlt.tracking import Tracker, sqlite_uri
from tests.cli import cxrlt_forked, cxrlt_in_process
from tests.multiview import VIEW_COUNTS, build_multiview_shards
from tests.trainers.conftest import REFERENCE_OVERRIDES, train_args

pytestmark = pytest.mark.timeout(600)
QUICK = ("schedule.epochs=1", "data.steps_per_epoch=3", "data.batch_size=8")


@pytest.fixture(scope="module")
def chexpert_shards(tmp_path_factory):
    """The starter harmonised to the CheXpert-14 schema: same images, other classes."""
    out = tmp_path_factory.mktemp("chexpert")
    schema = get_schema("chexpert-14")
    build_shards(read_starter(schema), schema, out, BuildOptions(), WriterOptions(max_size=32, samples_per_shard=300))
    return out


def predict_on_one_and_two_ranks(model, shards, split, tmp_path, *options):
    """`cxrlt predict` of `split` with 1 and 2 ranks: the two prediction files, read."""
    files = []
    for nproc in (1, 2):
        out = tmp_path / f"{shards.name}-{split}-{nproc}.csv"
        args = ["predict", model, "--shards", shards, "--split", split, "--out", out, *options, "--nproc", nproc]
        result = cxrlt_forked(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        files.append(read_predictions(out))
    return files


def test_predict_gives_the_same_file_on_one_and_two_ranks(trained, starter64, tmp_path):
    one, two = predict_on_one_and_two_ranks(trained / "best.pt", starter64, "test", tmp_path, "--tta", "hflip")
    assert len(one.image_ids) == 52 and list(one.image_ids) == list(two.image_ids)
    np.testing.assert_allclose(one.probs, two.probs, atol=1e-6)
    assert one.meta.split == "test" and one.meta.tta == "hflip" and one.meta.schema == "nih-14"
    assert one.meta.mlflow_run_id == load_model(trained / "best.pt").mlflow_run_id


def test_study_stage_starts_from_the_image_checkpoint_with_a_frozen_backbone(trained, starter64, tmp_path):
    out = tmp_path / "study"
    args = train_args(
        starter64,
        out,
        *QUICK,
        "stage.name=study",
        "model.kind=study",
        f"stage.init_from={trained / 'best.pt'}",
        "stage.freeze_backbone=true",
        "model.study.dim=64",
        "model.study.heads=4",
        "model.study.layers=1",
        "model.study.context.indication=true",
        "model.study.context.vitals=numeric",
    )
    result = cxrlt_forked(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    image, study = load_model(trained / "best.pt"), load_model(out / "best.pt")
    assert study.kind == "study"
    image_backbone = {
        k.removeprefix("backbone.model."): v for k, v in image.ema_state_dict.items() if k.startswith("backbone.")
    }
    study_backbone = {
        k.removeprefix("encoders.0.model."): v for k, v in study.state_dict.items() if k.startswith("encoders.0.")
    }
    assert image_backbone.keys() == study_backbone.keys()
    assert all(torch.equal(image_backbone[k], study_backbone[k]) for k in image_backbone)  # frozen, so unchanged
    predictions = tmp_path / "study-dev.csv"
    result = cxrlt_forked(
        "predict", out / "best.pt", "--shards", starter64, "--split", "dev", "--out", predictions, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_predictions(predictions).image_ids) == 54
    # Studies of up to 6 views for the model's 4 slots: every image gets a row, on 1 and 2 ranks alike
    # (batches of 3 split a study's view chunks across batches).
    multiview = tmp_path / "multiview"
    build_multiview_shards(multiview)
    one, two = predict_on_one_and_two_ranks(out / "best.pt", multiview, "dev", tmp_path, "--batch-size", "3")
    assert sorted(one.image_ids) == sorted(f"dev{s}-img{v}" for s, n in enumerate(VIEW_COUNTS) for v in range(n))
    assert list(one.image_ids) == list(two.image_ids) and list(one.study_ids) == list(two.study_ids)
    np.testing.assert_allclose(one.probs, two.probs, atol=1e-6)


def test_two_noisy_student_rounds_each_teaching_the_next(trained, starter64, tmp_path):
    out = tmp_path / "student"
    args = train_args(
        starter64,
        out,
        *QUICK,
        "stage.name=student",
        f"student.teacher={trained / 'best.pt'}",
        f"student.unlabelled={starter64}",
        "student.unlabelled_ratio=0.3",
        "student.iterations=2",
    )
    result = cxrlt_forked(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = [np.load(out / f"student-{k}" / "pseudo_labels.npz") for k in (1, 2)]
    assert len(set(rounds[0]["ids"].tolist())) == 515  # the train split (the unlabelled set repeats its ids)
    assert not np.allclose(rounds[0]["probs"], rounds[1]["probs"])  # round 2's teacher is round 1's student
    # The member's model file is where every stage puts it, and it is the last round's (the pipeline reads it).
    assert (out / "best.pt").read_bytes() == (out / "student-2" / "best.pt").read_bytes()
    parent = Tracker(sqlite_uri(tmp_path)).client.get_run((out / "mlflow_run_id").read_text().strip())
    children = Tracker(sqlite_uri(tmp_path)).children(parent.info.run_id)
    assert sorted(c.info.run_name for c in children) == ["student/student-1", "student/student-2"]


def test_a_list_of_resolutions_trains_one_member_each(starter64, tmp_path):
    out = tmp_path / "multires"
    result = cxrlt_forked(*train_args(starter64, out, *QUICK, "resolutions=[32, 64]"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [load_model(out / f"res-{s}" / "best.pt").transform["size"] for s in (32, 64)] == [32, 64]
    parent_id = (out / "mlflow_run_id").read_text().strip()
    assert len(Tracker(sqlite_uri(tmp_path)).children(parent_id)) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("data.shards=/nonexistent",), "data.shards = /nonexistent: no shard set there"),
        (("data.transform.size=48",), "resolution 48"),
        (("data.dev_split=validation",), "data.dev_split = 'validation'"),
        (("data.unknown_classes=['Bulla']",), "data.unknown_classes: ['Bulla']"),
        (("model.backbone.in_chans=3",), "data.transform.channels = 1 but model.backbone.in_chans = 3"),
    ],
)
def test_bad_training_input_is_refused_before_any_work(starter64, tmp_path, overrides, message, capfd):
    result = cxrlt_in_process(capfd, *train_args(starter64, tmp_path / "bad", *overrides), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "bad").exists()


def test_schema_mismatches_are_refused(trained, chexpert_shards, starter64, tmp_path, capfd):
    predicted = cxrlt_in_process(
        capfd, "predict", trained / "best.pt", "--shards", chexpert_shards, "--out", tmp_path / "p.csv", cwd=tmp_path
    )
    assert predicted.returncode == 2 and "schema 'nih-14'" in predicted.stderr and "chexpert-14" in predicted.stderr
    student = train_args(
        chexpert_shards, tmp_path / "s", "stage.name=student", f"student.teacher={trained / 'best.pt'}"
    )
    result = cxrlt_in_process(capfd, *student, cwd=tmp_path)
    assert result.returncode == 2 and "trained on other classes" in result.stderr
    again = cxrlt_forked(*train_args(starter64, trained), cwd=tmp_path)
    assert again.returncode == 2 and "pass --resume" in again.stderr


def test_a_finished_member_is_reused_only_for_the_config_it_was_trained_with(trained, starter64, tmp_path):
    work = trained.parent
    same = cxrlt_forked(*train_args(starter64, trained, *REFERENCE_OVERRIDES), "--resume", cwd=work)
    assert same.returncode == 0, same.stderr[-3000:]
    changed = cxrlt_forked(*train_args(starter64, trained, *REFERENCE_OVERRIDES, "optim.lr=1e-2"), "--resume", cwd=work)
    assert changed.returncode == 2 and "holds a finished run of another training config" in changed.stderr, (
        changed.stderr
    )
