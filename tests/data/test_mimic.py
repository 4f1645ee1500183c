"""The synthetic MIMIC-CXR-JPG / CXR-LT miniature: image and study level, context, bad images, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.sources.mimic import read_mimic_cxr_lt
from cxrlt.data.sources.mimic_context import extract_indication
from cxrlt.data.writer import WriterOptions
from cxrlt.errors import InputError
from cxrlt.labels import CXR_LT_2024_TASK1, get_schema
from launch.main import main

OPTIONS = WriterOptions(max_size=40, samples_per_shard=6)


def _read(mimic, target=CXR_LT_2024_TASK1):
    return read_mimic_cxr_lt(
        mimic.root,
        {"train": mimic.train, "dev": mimic.dev},
        target,
        mimic.metadata,
        mimic.reports,
        mimic.edstays,
        mimic.triage,
    )


def test_image_level_labels_splits_and_bad_images(mimic, tmp_path, read_back):
    index = build_shards(_read(mimic), CXR_LT_2024_TASK1, tmp_path, BuildOptions(), OPTIONS)
    assert {s["id"]: s["reason"] for s in index.skipped} == mimic.bad
    assert index.splits == {"train": int((~mimic.dev_rows).sum()) - len(mimic.bad), "dev": int(mimic.dev_rows.sum())}
    items = {item["id"]: item for item in read_back(tmp_path)}
    truth = mimic.frame.set_index("dicom_id")
    for dicom, item in items.items():
        if item["study_id"] == mimic.frame["study_id"].iloc[-1]:
            assert (item["labels"] == -1).all()  # development_task3.csv carries no labels
        else:
            assert np.array_equal(
                item["labels"].numpy(), truth.loc[dicom, list(CXR_LT_2024_TASK1.classes)].to_numpy(float)
            )
    positives = truth[~mimic.dev_rows.to_numpy()].drop(index=list(mimic.bad))[list(CXR_LT_2024_TASK1.classes)].sum()
    assert index.split_class_counts["train"] == {c: int(positives[c]) for c in CXR_LT_2024_TASK1.classes}


def test_view_position_filled_from_metadata(mimic):
    records = _read(mimic).records
    blank_in_csv = mimic.frame[mimic.frame["ViewPosition"] == ""]["dicom_id"]
    by_id = {r.image_id: r for r in records}
    assert len(blank_in_csv) > 0 and all(by_id[d].view != "UNKNOWN" for d in blank_in_csv)


def test_study_level_views_indication_vitals(mimic, tmp_path, read_back):
    index = build_shards(_read(mimic), CXR_LT_2024_TASK1, tmp_path, BuildOptions(level="study", max_views=4), OPTIONS)
    views_per_study = mimic.frame.groupby("study_id").size()
    assert index.views_dropped == int((views_per_study - 4).clip(lower=0).sum()) > 0  # 5-view studies keep 4
    items = {item["id"]: item for item in read_back(tmp_path, level="study")}
    good = mimic.frame[~mimic.frame["dicom_id"].isin(list(mimic.bad))]
    assert set(items) == set(good["study_id"])  # a study whose only image is bad is skipped (and listed)
    assert index.num_skipped == len(mimic.bad)
    for item in items.values():
        views = item["view_type"][item["view_mask"]].tolist()
        frontal = [v for v in views if v in (1, 2)]
        assert views[: len(frontal)] == frontal  # frontal views first
        assert item["images"].shape == (4, 1, 32, 32)
    with_context = [item for item in items.values() if item["has_indication"]]
    assert with_context and all("cough and fever" in item["indication"] for item in with_context)
    assert all(item["indication"] == "" for item in items.values() if not item["has_indication"])
    with_vitals = [item for item in items.values() if item["vitals_mask"].any()]
    assert with_vitals and len(with_vitals) < len(items)  # second studies fall outside every ED stay
    patient0 = next(item for item in with_vitals if item["patient_id"] == "10000032")
    assert patient0["vitals_mask"].tolist() == [True, True, True, False, True, True]  # o2sat blank in triage
    assert patient0["vitals"][0].item() == pytest.approx(98.1)


def test_study_level_over_image_set_reads_as_one_view_studies(mimic, tmp_path, read_back):
    build_shards(_read(mimic), CXR_LT_2024_TASK1, tmp_path, BuildOptions(), OPTIONS)
    items = read_back(tmp_path, split="dev", level="study", max_views=2)
    assert len(items) == 5 and all(item["view_mask"].tolist() == [True, False] for item in items)


def test_2023_naming_and_bad_label_cell(mimic, tmp_path, edit_cell):
    table = _read(mimic, get_schema("cxr-lt-2023"))
    assert "Adenopathy" in table.notes["unused_columns"][str(mimic.train)]
    record = table.records[0]
    normal = mimic.frame.iloc[0]["Normal"]
    assert record.labels[get_schema("cxr-lt-2023").index("No Finding")] == normal
    bad = tmp_path / "train_labeled.csv"
    edit_cell(mimic.train, bad, 2, "Edema", "0.5")
    with pytest.raises(
        InputError,
        match=r"train_labeled.csv: column 'Edema': label values must be 1, 0, -1 or blank; got line 4 = '0.5'",
    ):
        read_mimic_cxr_lt(mimic.root, {"train": bad}, CXR_LT_2024_TASK1)


def test_indication_extraction():
    report = "FINAL REPORT\n INDICATION:  ___F with chest pain.\n  Eval for PNA.\n\n COMPARISON: None.\n"
    assert extract_indication(report) == "___F with chest pain. Eval for PNA."
    assert extract_indication("FINDINGS: normal.\nIMPRESSION: none") is None
    assert extract_indication("INDICATION:   \nFINDINGS: x") is None


def test_indication_under_other_headers():
    """Real MIMIC-CXR variants: HISTORY / CLINICAL INFORMATION / REASON FOR EXAMINATION hold the indication."""
    history = (
        "                FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
        " HISTORY:  ___M with cough.\n \n FINDINGS: x\n"
    )
    assert extract_indication(history) == "___M with cough."
    assert extract_indication(" CLINICAL INFORMATION: fever\n IMPRESSION: none") == "fever"
    assert extract_indication("REASON FOR EXAMINATION: eval for pna\nFINDINGS: clear") == "eval for pna"
    assert extract_indication(" CLINICAL HISTORY:\n dyspnea\n COMPARISON: none") == "dyspnea"
    assert extract_indication(" IMPRESSION:  No acute process.\n") is None


def test_study_times_written_as_numbers():
    """StudyTime is HHMMSS.fff written as a number: leading zeros lost, fraction sometimes absent."""
    import pandas as pd

    from cxrlt.data.sources.mimic_context import study_times

    meta = pd.DataFrame({"StudyDate": ["21800105"] * 4, "StudyTime": ["83214.578", "21101", "5.5", "235959.1"]})
    assert [str(t) for t in study_times(meta)] == [
        "2180-01-05 08:32:14",
        "2180-01-05 02:11:01",
        "2180-01-05 00:00:05",
        "2180-01-05 23:59:59",
    ]


def test_cli_shards_and_reports_input_errors(mimic, tmp_path, capsys, edit_cell, read_back):
    out = tmp_path / "out"
    argv = [
        "shard",
        "mimic-cxr-lt",
        "--images",
        str(mimic.root),
        "--labels",
        str(mimic.train),
        "--labels",
        str(mimic.dev),
        "--metadata",
        str(mimic.metadata),
        "--out",
        str(out),
        "--max-size",
        "32",
        "--level",
        "study",
        "--workers",
        "2",
    ]
    assert main(argv) == 0
    index = json.loads((out / "_index.json").read_text())
    assert index["level"] == "study" and index["splits"]["dev"] == 1 and index["num_skipped"] == len(mimic.bad)
    assert "images skipped" in capsys.readouterr().out
    # The default stores every view: the 5-view dev study reads back as two chunks of 4 slots, every image.
    chunks = read_back(out, split="dev", level="study")
    views = [i for item in chunks for i, on in zip(item["image_ids"], item["view_mask"].tolist()) if on]
    assert (
        index["views_dropped"] == 0
        and len(chunks) == 2
        and {item["id"] for item in chunks} == {mimic.frame["study_id"].iloc[-1]}
    )
    assert sorted(views) == sorted(mimic.frame[mimic.dev_rows]["dicom_id"])
    bad = tmp_path / "train_labeled.csv"
    edit_cell(mimic.train, bad, 0, "Mass", "2")
    assert (
        main(["shard", "mimic-cxr-lt", "--images", str(mimic.root), "--labels", str(bad), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "column 'Mass': label values must be 1, 0, -1 or blank; got line 2 = '2'" in capsys.readouterr().err
    assert main(["shard", "nih", "--out", str(tmp_path / "y")]) == 2
    assert "needs --table" in capsys.readouterr().err
