"""The prediction store aligns members by id and class name and refuses mismatches with files named."""

import json

import numpy as np
import pytest

from cxrlt.errors import InputError
from cxrlt.predictions import PredictionMeta, read_predictions, sidecar_path, write_predictions
from ensembles.simulate import simulate, write_simulation
from ensembles.store import load_labels, load_members

CLASSES = ("Atelectasis", "Cardiomegaly", "Edema", "Hernia")


@pytest.fixture
def members(tmp_path):
    sim = simulate(60, 3, CLASSES, seed=3)
    paths, labels = write_simulation(sim, tmp_path, "dev", "cxr-lt-2024-task1")
    return sim, paths, labels


def rewrite(path, *, order=None, classes=None, **meta_changes):
    """Rewrite a member with rows permuted / columns reordered / sidecar fields changed."""
    loaded = read_predictions(path)
    order = np.arange(loaded.image_ids.size) if order is None else order
    classes = loaded.meta.classes if classes is None else classes
    columns = [loaded.meta.classes.index(c) for c in classes]
    fields = {**loaded.meta.__dict__, "classes": tuple(classes), **meta_changes}
    write_predictions(
        path,
        loaded.image_ids[order],
        loaded.study_ids[order],
        loaded.probs[order][:, columns],
        PredictionMeta(**fields),
    )


def test_rows_and_columns_are_aligned_by_id_and_name(members):
    sim, paths, _ = members
    rewrite(paths[1], order=np.random.default_rng(0).permutation(60), classes=CLASSES[::-1])
    stack = load_members(paths)
    assert stack.classes == CLASSES and stack.names == ["member00", "member01", "member02"]
    np.testing.assert_allclose(stack.probs, sim.probs, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema": "nih-14"}, r"members disagree on schema: 'cxr-lt-2024-task1': .*member00.*'nih-14': .*member01"),
        ({"split": "test"}, r"members disagree on split"),
        ({"model": "member00"}, r"model 'member00' is also in .*member00\.dev\.csv; one file per model"),
    ],
)
def test_mismatched_sidecars_are_refused(members, change, message):
    _, paths, _ = members
    rewrite(paths[1], **change)
    with pytest.raises(InputError, match=message):
        load_members(paths)


def test_mismatched_classes_are_refused(members):
    _, paths, _ = members
    rewrite(paths[2], classes=CLASSES[:3])
    with pytest.raises(InputError, match=r"member02\.dev\.csv: classes differ from .*member00.*missing \['Hernia'\]"):
        load_members(paths)


def test_mismatched_ids_are_refused(members):
    _, paths, _ = members
    rewrite(paths[1], order=np.arange(59))
    with pytest.raises(InputError, match=r"member01\.dev\.csv: image ids differ .*1 missing \(img0000059\)"):
        load_members(paths)


def test_an_image_in_another_study_is_refused(members):
    _, paths, _ = members
    loaded = read_predictions(paths[1])
    studies = loaded.study_ids.copy()
    studies[5] = "elsewhere"
    write_predictions(paths[1], loaded.image_ids, studies, loaded.probs, loaded.meta)
    with pytest.raises(InputError, match=r"image img0000005 is in study elsewhere here"):
        load_members(paths)


def test_labels_are_aligned_and_missing_rows_named(members, tmp_path):
    sim, paths, labels_path = members
    stack = load_members(paths)
    table = load_labels(labels_path, stack.image_ids, CLASSES)
    np.testing.assert_array_equal(table.labels, sim.labels)
    np.testing.assert_array_equal(table.patient_ids, sim.patient_ids)
    lines = labels_path.read_text().splitlines()
    labels_path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match=r"labels\.dev\.csv: no row for 1 of 60 predicted images: img0000059"):
        load_labels(labels_path, stack.image_ids, CLASSES)
    assert json.loads(sidecar_path(paths[0]).read_text())["model"] == "member00"
