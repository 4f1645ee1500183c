"""VinDr-CXR and BRAX: real DICOM files (written with pydicom) windowed and inverted like a viewer, VinDr
radiologists merged by majority or any-positive, test consensus as the test split, BRAX's PNG or DICOM
copy, and labels placed on CXR-LT 2024 names where they mean the same."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.dicom import DicomLoader, dicom_gray8, write_dx_dicom
from cxrlt.data.images import ImageProblem
from cxrlt.data.shardset import read_index
from cxrlt.data.sources.brax import brax_age, read_brax
from cxrlt.data.sources.vindr import read_vindr
from cxrlt.data.writer import WriterOptions
from cxrlt.errors import InputError
from cxrlt.labels import CHEXPERT_14, CXR_LT_2024_TASK1, VINDR_CXR
from launch.main import main

SMALL = WriterOptions(max_size=40, image_format="png", samples_per_shard=8)
RAMP = np.tile(np.linspace(0, 4000, 64), (32, 1)).astype(np.uint16)  # 12-bit values rising left to right


def write_dicom(path, pixels=RAMP, photometric="MONOCHROME2", window=None):
    return write_dx_dicom(pixels, path, photometric, window)


def test_dicom_display_follows_the_window_and_inverts_monochrome1(tmp_path):
    plain = dicom_gray8(write_dicom(tmp_path / "a.dcm").read_bytes(), "a")
    assert plain.dtype == np.uint8 and plain.shape == (32, 64)
    assert plain[0, 0] == 0 and plain[0, -1] == 255 and (np.diff(plain[0].astype(int)) >= 0).all()
    windowed = dicom_gray8(write_dicom(tmp_path / "w.dcm", window=(2000, 1000)).read_bytes(), "w")
    below, above = RAMP[0] < 1450, RAMP[0] > 2550
    assert (windowed[0, below] == 0).all() and (windowed[0, above] == 255).all()
    assert 0 < windowed[0, 32] < 255  # 2000 sits mid-window
    inverted = dicom_gray8(write_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1").read_bytes(), "m1")
    assert np.array_equal(inverted, 255 - plain)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while reading the broken file
def test_dicom_loader_shrinks_dicom_passes_other_files_and_flags_bad_ones(tmp_path, make_image):
    import io

    from PIL import Image

    loader = DicomLoader(max_size=16)
    png = Image.open(io.BytesIO(loader("a", str(write_dicom(tmp_path / "a.dcm")))))
    assert png.format == "PNG" and png.size == (16, 8)
    make_image(tmp_path / "b.png", seed=1)
    assert loader("b", str(tmp_path / "b.png")) == (tmp_path / "b.png").read_bytes()
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(ImageProblem) as problem:
        loader("broken", str(broken))
    assert problem.value.reason == "corrupt"
    with pytest.raises(ImageProblem) as problem:
        loader("gone", str(tmp_path / "gone.dcm"))
    assert problem.value.reason == "missing"


def _vindr_row(image_id, rad, positives):
    return ",".join([image_id, rad, *("1" if c in positives else "0" for c in VINDR_CXR.classes)])


@pytest.fixture
def vindr(tmp_path):
    """Three training images read by three radiologists, one test image; A is MONOCHROME1."""
    header = ",".join(["image_id", "rad_id", *VINDR_CXR.classes])
    train = [
        header,
        _vindr_row("A", "R1", {"Pleural effusion"}),
        _vindr_row("A", "R2", {"Pleural effusion"}),
        _vindr_row("A", "R3", {"Nodule/Mass"}),
        _vindr_row("B", "R1", {"No finding"}),
        _vindr_row("B", "R2", {"No finding"}),
        _vindr_row("B", "R4", {"Cardiomegaly"}),
        _vindr_row("C", "R5", {"No finding"}),
        _vindr_row("C", "R6", {"No finding"}),
        _vindr_row("C", "R7", {"No finding"}),
    ]
    test_header = header.replace("rad_id,", "").replace("Other diseases", "Other disease")
    test = [test_header, _vindr_row("T", "", {"Pneumothorax"}).replace("T,,", "T,")]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "image_labels_train.csv").write_text("\n".join(train) + "\n")
    (tmp_path / "annotations" / "image_labels_test.csv").write_text("\n".join(test) + "\n")
    write_dicom(tmp_path / "train" / "A.dicom", photometric="MONOCHROME1")
    for image_id, folder in (("B", "train"), ("C", "train"), ("T", "test")):
        write_dicom(tmp_path / folder / f"{image_id}.dicom", window=(2000, 3000))
    return tmp_path


def _labels(items, schema, *classes):
    return {item["id"]: tuple(item["labels"][schema.index(c)].item() for c in classes) for item in items}


@pytest.mark.parametrize(
    "merge, expected",
    [
        # A: effusion 2/3, nodule 1/3; B: no finding 2/3, cardiomegaly 1/3; C: no finding 3/3
        ("majority", {"A": (1, 0, 0, 0), "B": (0, 0, 0, 1), "C": (0, 0, 0, 1), "T": (0, 0, 1, 0)}),
        ("any", {"A": (1, 1, 0, 0), "B": (0, 0, 0, 0), "C": (0, 0, 0, 1), "T": (0, 0, 1, 0)}),
    ],
)
def test_vindr_merges_radiologists_and_keeps_the_test_consensus(vindr, tmp_path, read_back, merge, expected):
    table = read_vindr(
        vindr / "annotations" / "image_labels_train.csv",
        vindr / "annotations" / "image_labels_test.csv",
        vindr,
        VINDR_CXR,
        merge,
    )
    out = tmp_path / "shards"
    index = build_shards(table, VINDR_CXR, out, BuildOptions(split_by="none"), SMALL, DicomLoader(40))
    assert index.splits == {"train": 3, "test": 1} and index.num_skipped == 0
    items = read_back(out)
    classes = ("Pleural effusion", "Nodule/Mass", "Pneumothorax", "No finding")
    assert _labels(items, VINDR_CXR, *classes) == {k: tuple(map(float, v)) for k, v in expected.items()}
    if merge == "any":
        assert _labels(items, VINDR_CXR, "Cardiomegaly")["B"] == (1.0,)
    # A is MONOCHROME1 with values rising to the right: stored bone-bright, i.e. falling to the right
    image = {item["id"]: item["image"][0] for item in items}
    assert image["A"][:, :4].mean() > image["A"][:, -4:].mean()
    assert image["B"][:, :4].mean() < image["B"][:, -4:].mean()


def test_vindr_labels_land_on_cxr_lt_names_through_the_shard_command(vindr, tmp_path, read_back):
    out = tmp_path / "cxr-lt"
    args = ["shard", "vindr-cxr", "--images", str(vindr), "--out", str(out), "--schema", "cxr-lt-2024-task1"]
    args += ["--table", str(vindr / "annotations" / "image_labels_train.csv"), "--merge", "any"]
    args += ["--test-table", str(vindr / "annotations" / "image_labels_test.csv"), "--split", "1,0,0"]
    args += ["--max-size", "40"]
    assert main(args) == 0
    assert read_index(out).sources[0]["merge"] == "any"
    labels = _labels(read_back(out), CXR_LT_2024_TASK1, "Pleural Effusion", "Normal", "Nodule", "Support Devices")
    assert labels["A"] == (1.0, 0.0, -1.0, -1.0)  # Nodule/Mass is neither Nodule nor Mass: unknown
    assert labels["C"] == (0.0, 1.0, -1.0, -1.0)  # No finding -> Normal


def test_vindr_bad_label_and_duplicate_consensus_are_named(vindr):
    train = vindr / "annotations" / "image_labels_train.csv"
    lines = train.read_text().splitlines()
    lines[2] = lines[2].replace("A,R2,0", "A,R2,-1")  # valid elsewhere (uncertain), not in VinDr
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputError,
        match=r"image_labels_train.csv: line 3, column 'Aortic enlargement': VinDr labels are 0 or 1, got '-1'",
    ):
        read_vindr(train, None, vindr, VINDR_CXR)
    test = vindr / "annotations" / "image_labels_test.csv"
    test.write_text(test.read_text() + test.read_text().splitlines()[1] + "\n")
    with pytest.raises(InputError, match=r"image_labels_test.csv: image 'T' has two consensus rows"):
        read_vindr(None, test, vindr, VINDR_CXR)


@pytest.fixture
def brax(tmp_path, make_image):
    """Patient P1's study S1 (PA + lateral) and patient P2's study S2, each image as DICOM and PNG."""
    header = ["PatientID", "PatientSex", "PatientAge", "AccessionNumber", "ViewPosition", "DicomPath", "PngPath"]
    rows = []
    for i, (patient, sex, age, study, view, cells) in enumerate(
        [
            ("P1", "M", "85 or more", "S1", "PA", {"Cardiomegaly": "1", "Edema": "-1"}),
            ("P1", "M", "85 or more", "S1", "LL", {"Cardiomegaly": "1", "Edema": "-1"}),
            ("P2", "F", "40-44", "S2", "AP", {"No Finding": "1", "Support Devices": "1"}),
        ]
    ):
        stem = f"images/{patient}/{study}/image-{i}"
        write_dicom(tmp_path / f"{stem}.dcm", window=(2000, 3000))
        make_image(tmp_path / f"{stem}.png", seed=i)
        labels = [cells.get(c, "" if c == "Pneumothorax" else "0") for c in CHEXPERT_14.classes]
        rows.append(",".join([patient, sex, age, study, view, f"{stem}.dcm", f"{stem}.png", *labels]))
    table = tmp_path / "master_spreadsheet_update.csv"
    table.write_text("\n".join([",".join(header + list(CHEXPERT_14.classes)), *rows]) + "\n")
    return table


@pytest.mark.parametrize("copy", ["png", "dicom"])
def test_brax_shards_either_copy_with_chexpert_policies(brax, tmp_path, read_back, copy):
    table = read_brax(brax, brax.parent, CHEXPERT_14, image=copy)
    records = {r.image_id: r for r in table.records}
    first = records["images_P1_S1_image-0"]
    assert (first.study_id, first.patient_id, first.view, first.sex, first.age) == ("S1", "P1", "PA", "M", 85.0)
    assert records["images_P2_S2_image-2"].age == 42.0 and records["images_P1_S1_image-1"].view == "LL"
    out = tmp_path / copy
    index = build_shards(table, CHEXPERT_14, out, BuildOptions(split_by="none"), SMALL, DicomLoader(40))
    assert index.num_samples == 3 and index.num_skipped == 0
    labels = _labels(read_back(out), CHEXPERT_14, "Cardiomegaly", "Edema", "Pneumothorax", "No Finding")
    assert labels["images_P1_S1_image-0"] == (1.0, -1.0, 0.0, 0.0)  # -1 uncertain: unknown; blank: negative
    assert labels["images_P2_S2_image-2"] == (0.0, 0.0, 0.0, 1.0)


def test_brax_blank_path_and_ages(brax):
    assert [brax_age(v) for v in ("85 or more", "40-44", "45", "", "unknown")] == [85.0, 42.0, 45.0, None, None]
    lines = brax.read_text().splitlines()
    lines[2] = lines[2].replace("images/P1/S1/image-1.png", "")
    brax.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"master_spreadsheet_update.csv: line 3, column 'PngPath': blank"):
        read_brax(brax, brax.parent, CHEXPERT_14)
    assert len(read_brax(brax, brax.parent, CHEXPERT_14, image="dicom").records) == 3
