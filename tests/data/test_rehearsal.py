"""`cxrlt rehearsal make`: the MIMIC-CXR-LT-shaped tree from the embedded NIH images and the IU reports."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlt.data.rehearsal_context import FRONTAL
from cxrlt.data.sources.nih import NIH_COLUMNS
from cxrlt.labels import CXR_LT_2024_TASK1, CXR_LT_2024_TASK2, CXR_LT_2024_TASK3, canonical_name
from launch.main import main

REPORTS = Path("/work/shared/data/reports/NLMCXR_reports.tgz")
pytestmark = pytest.mark.skipif(not REPORTS.is_file(), reason="needs the IU X-ray report archive")

N_IMAGES = 150
IDS = ["dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath"]
TASK1 = [*IDS, *CXR_LT_2024_TASK1.classes]
LABEL_FILES = {
    "train_labeled.csv": TASK1,
    "development_labeled_task1.csv": TASK1,
    "development_labeled_task2.csv": [*IDS, *sorted(CXR_LT_2024_TASK2.classes)],
    "development_task3.csv": IDS,
    "test_labeled_task1.csv": TASK1,
}
METADATA = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
EDSTAYS = [
    "subject_id",
    "hadm_id",
    "stay_id",
    "intime",
    "outtime",
    "gender",
    "race",
    "arrival_transport",
    "disposition",
]
TRIAGE = [
    "subject_id",
    "stay_id",
    "temperature",
    "heartrate",
    "resprate",
    "o2sat",
    "sbp",
    "dbp",
    "pain",
    "acuity",
    "chiefcomplaint",
]
NIH_TABLE = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
]


def _make(out: Path, *extra: str) -> int:
    return main(["rehearsal", "make", "--out", str(out), "--images", str(N_IMAGES), "--quiet", *extra])


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rehearsal") / "tree"
    assert _make(out) == 0
    return out


@pytest.fixture(scope="module")
def labels(tree: Path) -> pd.DataFrame:
    """Every image of the three labelled Task-1 files, with its split."""
    files = {"train": "train_labeled.csv", "dev": "development_labeled_task1.csv", "test": "test_labeled_task1.csv"}
    return pd.concat([_csv(tree / "cxr-lt-2024" / f).assign(split=s) for s, f in files.items()], ignore_index=True)


def test_layout_and_columns(tree):
    for name, columns in LABEL_FILES.items():
        assert list(_csv(tree / "cxr-lt-2024" / name).columns) == columns, name
    answers = _csv(tree / "answers" / "development_labeled_task3.csv")
    assert list(answers.columns) == [*IDS, *CXR_LT_2024_TASK3.classes]
    dev_ids = _csv(tree / "cxr-lt-2024" / "development_task3.csv")
    assert answers["dicom_id"].tolist() == dev_ids["dicom_id"].tolist()
    jpg = tree / "mimic-cxr-jpg" / "2.0.0"
    assert list(_csv(jpg / "mimic-cxr-2.0.0-metadata.csv.gz").columns) == METADATA
    with gzip.open(jpg / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:  # really gzip
        assert f.readline().startswith("dicom_id,")
    ed = tree / "mimic-iv-ed" / "2.2" / "ed"
    assert list(_csv(ed / "edstays.csv.gz").columns) == EDSTAYS
    assert list(_csv(ed / "triage.csv.gz").columns) == TRIAGE
    nih = _csv(tree / "nih-external" / "Data_Entry_2017_v2020.csv")
    assert list(nih.columns) == NIH_TABLE and set(NIH_COLUMNS) <= set(nih.columns)
    assert sorted(p.name for p in (tree / "nih-external" / "images").iterdir()) == sorted(nih["Image Index"])
    manifest = json.loads((tree / "manifest.json").read_text())
    assert manifest["options"]["images"] == N_IMAGES and manifest["options"]["external"] == len(nih) == 24
    readme = (tree / "README.md").read_text()
    assert "structural rehearsal" in readme and "Wang" in readme and "Open-i" in readme
    assert all(c in readme for c in manifest["classes_without_positives"])


def test_id_formats_and_files(tree, labels):
    assert labels["subject_id"].str.fullmatch(r"1\d{7}").all()
    assert labels["study_id"].str.fullmatch(r"s5\d{7}").all()
    assert labels["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()
    expected = "files/p" + labels["subject_id"].str[:2] + "/p" + labels["subject_id"] + "/" + labels["study_id"] + "/"
    assert (labels["fpath"] == expected + labels["dicom_id"] + ".jpg").all()
    jpg = tree / "mimic-cxr-jpg" / "2.0.0"
    for fpath in labels["fpath"]:
        assert (jpg / fpath).is_file()
    with Image.open(jpg / labels["fpath"].iloc[0]) as image:
        assert image.format == "JPEG" and image.mode == "L" and image.size == (256, 256)
    for study_dir in {str(Path(f).parent) for f in labels["fpath"]}:
        assert (tree / "mimic-cxr" / "2.0.0" / f"{study_dir}.txt").is_file()
    meta = _csv(jpg / "mimic-cxr-2.0.0-metadata.csv.gz").set_index("dicom_id").loc[labels["dicom_id"]]
    assert (meta["study_id"].to_numpy() == labels["study_id"].str[1:].to_numpy()).all()  # no "s" in the metadata
    assert meta["StudyDate"].str.fullmatch(r"2(1\d\d|200)\d{4}").all()
    assert meta["StudyTime"].str.fullmatch(r"[1-9]\d{0,5}(\.\d{1,3})?|0").all()
    assert (~meta["StudyTime"].str.contains(".", regex=False)).any()  # the fraction is sometimes absent
    first = meta.assign(subject=labels["subject_id"].to_numpy()).drop_duplicates("study_id")
    for _, group in first.groupby("subject"):
        assert group["StudyDate"].is_unique  # a patient's studies fall on different (increasing) days


def test_studies_splits_and_labels(tree, labels):
    sizes = labels.groupby("study_id").size()
    assert sizes.between(1, 6).all()
    for split, group in labels.groupby("split"):
        split_sizes = group.groupby("study_id").size()
        assert {5, 6} <= set(split_sizes), split
    assert labels.groupby("subject_id")["split"].nunique().max() == 1  # no patient in two splits
    assert labels.groupby("subject_id")["study_id"].nunique().between(1, 3).all()
    classes = list(CXR_LT_2024_TASK1.classes)
    assert labels[classes].isin(["0", "1"]).all().all()
    assert (labels.groupby("study_id")[classes].nunique() == 1).all().all()  # study-level labels
    assert labels.groupby("study_id")["ViewPosition"].agg(lambda v: any(x in FRONTAL for x in v)).all()
    task2 = _csv(tree / "cxr-lt-2024" / "development_labeled_task2.csv")
    dev = labels[labels["split"] == "dev"]
    gold = dev[dev["study_id"].isin(set(task2["study_id"]))]
    assert sorted(gold["dicom_id"]) == sorted(task2["dicom_id"])  # whole studies
    assert 0.3 < task2["study_id"].nunique() / dev["study_id"].nunique() < 0.7
    manifest = json.loads((tree / "manifest.json").read_text())
    positives = labels[classes].astype(int).sum()
    assert set(manifest["classes_without_positives"]) == {c for c in classes if positives[c] == 0}
    # Classes NIH lacks come from the paired reports' MeSH terms.
    assert positives[["Support Devices", "Lung Opacity", "Granuloma"]].gt(0).any()


def test_shard_mimic_reads_tree_with_context(tree, tmp_path, read_back):
    jpg, ed, lt = tree / "mimic-cxr-jpg" / "2.0.0", tree / "mimic-iv-ed" / "2.2" / "ed", tree / "cxr-lt-2024"
    base = [
        "shard",
        "mimic-cxr-lt",
        "--images",
        str(jpg),
        "--labels",
        str(lt / "train_labeled.csv"),
        "--labels",
        str(lt / "development_labeled_task1.csv"),
        "--labels",
        str(lt / "test_labeled_task1.csv"),
        "--metadata",
        str(jpg / "mimic-cxr-2.0.0-metadata.csv.gz"),
        "--reports",
        str(tree / "mimic-cxr" / "2.0.0"),
        "--ed-stays",
        str(ed / "edstays.csv.gz"),
        "--ed-triage",
        str(ed / "triage.csv.gz"),
        "--max-size",
        "32",
    ]
    manifest = json.loads((tree / "manifest.json").read_text())
    assert main([*base, "--out", str(tmp_path / "image")]) == 0
    index = json.loads((tmp_path / "image" / "_index.json").read_text())
    assert index["splits"] == {s: manifest["images"][s] for s in ("train", "dev", "test")}
    source = index["sources"][0]
    assert source["with_indication"] / source["records"] > 0.5
    assert 0.25 < source["with_vitals"] / source["records"] < 0.7
    assert main([*base, "--out", str(tmp_path / "study"), "--level", "study", "--max-views", "8"]) == 0
    index = json.loads((tmp_path / "study" / "_index.json").read_text())
    assert index["splits"] == manifest["studies"] and index["views_dropped"] == 0 and index["num_skipped"] == 0
    items = read_back(tmp_path / "study", split="dev", level="study", max_views=8)
    assert max(int(item["view_mask"].sum()) for item in items) == 6
    assert sum(bool(item["has_indication"]) for item in items) > len(items) / 2
    assert 0 < sum(bool(item["vitals_mask"].any()) for item in items) < len(items)


def test_shard_nih_external_knows_only_nih_classes(tree, tmp_path, read_back):
    nih = tree / "nih-external"
    argv = [
        "shard",
        "nih",
        "--table",
        str(nih / "Data_Entry_2017_v2020.csv"),
        "--images",
        str(nih / "images"),
        "--schema",
        "cxr-lt-2024-task1",
        "--out",
        str(tmp_path / "nih"),
        "--max-size",
        "32",
    ]
    assert main(argv) == 0
    items = read_back(tmp_path / "nih")
    assert len(items) == 24
    from cxrlt.labels import NIH_14

    known = {canonical_name(c, "nih") for c in (*NIH_14.classes, "No Finding")}
    for item in items:
        values = item["labels"].numpy()
        for j, name in enumerate(CXR_LT_2024_TASK1.classes):
            assert (values[j] in (0.0, 1.0)) if name in known else values[j] == -1.0, name


def _csv_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.suffix in (".csv", ".gz", ".txt"))
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_deterministic_reused_and_options_checked(tree, tmp_path, capsys):
    again = tmp_path / "again"
    assert _make(again) == 0
    assert _csv_bytes(again) == _csv_bytes(tree)
    capsys.readouterr()
    assert _make(tree) == 0
    assert "reusing" in capsys.readouterr().out
    assert _make(tree, "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "'seed': 0" in err and "'seed': 1" in err
    other = tmp_path / "other"
    assert _make(other, "--seed", "1") == 0
    assert _csv_bytes(other)["cxr-lt-2024/train_labeled.csv"] != _csv_bytes(tree)["cxr-lt-2024/train_labeled.csv"]


def test_partial_output_never_looks_complete(tmp_path, monkeypatch, capsys):
    from cxrlt.data import rehearsal

    def fail(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(rehearsal, "_write_labels", fail)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        _make(tmp_path / "tree")
    assert list(tmp_path.iterdir()) == []  # neither DIR nor the folder it was being written in
    (tmp_path / "tree").mkdir()
    assert _make(tmp_path / "tree") == 2
    assert "no manifest.json" in capsys.readouterr().err
    missing = str(tmp_path / "none.tgz")
    assert main(["rehearsal", "make", "--out", str(tmp_path / "x"), "--reports-archive", missing]) == 2
    assert "--reports-archive" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_report_layout_and_indication_reader(tree):
    from cxrlt.data.sources.mimic_context import extract_indication

    texts = [p.read_text() for p in sorted((tree / "mimic-cxr" / "2.0.0").rglob("*.txt"))]
    assert all(t.lstrip().startswith("FINAL REPORT") and "IMPRESSION:" in t for t in texts)
    assert not any(re.search(r"X{3,}", t) for t in texts)  # IU de-identification shown as ___
    history = [t for t in texts if "\n HISTORY:" in t]
    assert history and all(extract_indication(t) for t in history)
    standard = [t for t in texts if "\n INDICATION:" in t]
    assert standard and all(extract_indication(t) for t in standard)
    assert any("EXAMINATION:" not in t and extract_indication(t) is None for t in texts)  # IMPRESSION only
    assert np.mean([extract_indication(t) is not None for t in texts]) > 0.6


def test_shard_vindr_external_decodes_its_dicoms_like_the_originals(tree, tmp_path, read_back):
    from cxrlt.data.dicom import dicom_gray8
    from cxrlt.labels import VINDR_CXR

    vindr = tree / "vindr-external"
    labels = _csv(vindr / "annotations" / "image_labels_train.csv")
    images = sorted(p.stem for p in (vindr / "train").iterdir())
    assert len(images) == 6 and sorted(set(labels["image_id"])) == images
    assert (labels.groupby("image_id")["rad_id"].nunique() == 3).all()
    starter = Path(__file__).resolve().parents[2] / "cxrlt" / "resources" / "nih-starter"
    for image_id in images:
        with Image.open(starter / "images" / f"{image_id}.png") as original:
            pixels = np.asarray(original.convert("L"), dtype=np.int64)
        # 8-bit -> 12-bit detector values (every other file MONOCHROME1) -> windowed and stretched to the
        # image's own range (cxrlt.data.dicom): the original's grey levels, stretched, within rounding.
        decoded = dicom_gray8((vindr / "train" / f"{image_id}.dicom").read_bytes(), image_id).astype(np.int64)
        stretched = (pixels - pixels.min()) * 255.0 / (pixels.max() - pixels.min())
        assert np.abs(decoded - stretched).max() <= 2
    argv = ["shard", "vindr-cxr", "--table", str(vindr / "annotations" / "image_labels_train.csv")]
    argv += ["--images", str(vindr), "--schema", "vindr-cxr", "--split", "1,0,0", "--out", str(tmp_path / "v")]
    assert main([*argv, "--max-size", "32"]) == 0
    items = {item["id"]: item for item in read_back(tmp_path / "v")}
    assert sorted(items) == images
    nih = pd.read_csv(starter / "labels.csv", dtype=str).set_index("Image Index")
    for image_id, item in items.items():
        findings = set(nih.at[f"{image_id}.png", "Finding Labels"].split("|"))
        values = dict(zip(VINDR_CXR.classes, item["labels"].tolist(), strict=True))
        assert values["Cardiomegaly"] == float("Cardiomegaly" in findings)
        assert values["No finding"] == float(findings == {"No Finding"})
        assert values["Nodule/Mass"] == float(bool(findings & {"Nodule", "Mass"}))


def test_shard_chexpert_external_reads_the_nih_labels_on_chexpert_names(tree, tmp_path, read_back):
    from cxrlt.data.rehearsal_public import chexpert_row
    from cxrlt.labels import CHEXPERT_14

    release = tree / "chexpert-external"
    table = pd.read_csv(release / "CheXpert-v1.0-small" / "train.csv")
    argv = ["shard", "chexpert", "--table", str(release / "CheXpert-v1.0-small" / "train.csv")]
    argv += ["--images", str(release), "--split", "1,0,0", "--out", str(tmp_path / "c"), "--max-size", "32"]
    assert main(argv) == 0
    items = {item["id"]: item["labels"].tolist() for item in read_back(tmp_path / "c")}
    assert len(items) == len(table) == 6
    starter = pd.read_csv(Path(__file__).resolve().parents[2] / "cxrlt/resources/nih-starter/labels.csv", dtype=str)
    possible = {tuple(chexpert_row(labels).values()) for labels in starter["Finding Labels"]}
    for _, row in table.iterrows():
        cells = [None if pd.isna(row[c]) else float(row[c]) for c in CHEXPERT_14.classes]
        assert tuple(cells) in possible  # some real NIH image's labels, on CheXpert's names
        image_id = "_".join(row["Path"].split("/")[2:4]) + "_view1_frontal"
        # CheXpert's reading: a stated 1.0 is positive, a blank (not mentioned) negative.
        assert items[image_id] == [1.0 if c == 1.0 else 0.0 for c in cells]
