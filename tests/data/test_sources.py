"""Each public source (starter, NIH, CheXpert, PadChest, csv) shards and reads back with the right labels."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.sources.chexpert import read_chexpert
from cxrlt.data.sources.csvfolder import CsvColumns, read_csv_folder
from cxrlt.data.sources.nih import read_nih
from cxrlt.data.sources.padchest import read_padchest
from cxrlt.data.sources.starter import read_starter, starter_folder
from cxrlt.data.writer import WriterOptions
from cxrlt.errors import InputError
from cxrlt.labels import CHEXPERT_14, CXR_LT_2024_ALL, NIH_14, get_schema

SMALL = WriterOptions(max_size=40, image_format="png", samples_per_shard=8)


def test_starter_shards_every_image_and_reads_back(tmp_path, read_back):
    table = read_starter(NIH_14)
    index = build_shards(table, NIH_14, tmp_path, BuildOptions(), WriterOptions(max_size=32, samples_per_shard=256))
    assert index.num_samples == 621 and index.num_skipped == 0
    assert sum(index.splits.values()) == 621 and set(index.splits) == {"train", "dev", "test"}
    # starter labels.csv carries one 0/1 column per finding: the shard counts must equal its column sums
    import pandas as pd

    truth = pd.read_csv(starter_folder() / "labels.csv")
    assert index.class_counts == {c: int(truth[c].sum()) for c in NIH_14.classes}
    items = read_back(tmp_path, "dev")
    assert len(items) == index.splits["dev"]
    by_id = truth.set_index(truth["Image Index"].str.replace(".png", ""))
    for item in items[:10]:
        expected = by_id.loc[item["id"], list(NIH_14.classes)].to_numpy(dtype=np.float32)
        assert np.array_equal(item["labels"].numpy(), expected)
        assert item["image"].shape == (1, 32, 32)


def test_nih_labels_harmonised_and_missing_image_listed(nih, tmp_path, read_back):
    table_path, images, frame = nih
    target = get_schema("cxr-lt-2024-task1")
    index = build_shards(read_nih(table_path, images, target), target, tmp_path, BuildOptions(split_by="none"), SMALL)
    missing = frame["Image Index"][4].replace(".png", "")
    assert [(s["id"], s["reason"]) for s in index.skipped] == [(missing, "missing")]
    assert index.num_samples == len(frame) - 1
    items = {item["id"]: item for item in read_back(tmp_path)}
    first = items["00000001_000"]  # real row: Cardiomegaly only
    labels = dict(zip(target.classes, first["labels"].tolist()))
    assert labels["Cardiomegaly"] == 1.0 and labels["Pleural Effusion"] == 0.0
    assert labels["Support Devices"] == -1.0  # NIH never annotated it: unknown, not negative
    no_finding = frame.index[frame["Finding Labels"] == "No Finding"][0]
    assert dict(zip(target.classes, items[frame["Image Index"][no_finding][:-4]]["labels"].tolist()))["Normal"] == 1.0


@pytest.mark.parametrize("policy, expected", [("unknown", -1.0), ("positive", 1.0), ("negative", 0.0)])
def test_chexpert_uncertain_policy(chexpert, tmp_path, read_back, policy, expected):
    table_path, root, frame = chexpert
    table = read_chexpert(table_path, root, CHEXPERT_14, uncertain=policy)
    index = build_shards(table, CHEXPERT_14, tmp_path, BuildOptions(split_by="none"), SMALL)
    assert index.num_samples == len(frame) and index.num_skipped == 0
    items = {item["id"]: item for item in read_back(tmp_path)}
    # real row 2: patient00002/study2, Cardiomegaly -1.0, Lung Opacity 1.0, Pneumothorax blank
    labels = dict(zip(CHEXPERT_14.classes, items["patient00002_study2_view1_frontal"]["labels"].tolist()))
    assert labels["Cardiomegaly"] == expected
    assert labels["Lung Opacity"] == 1.0
    assert labels["Pneumothorax"] == 0.0  # blank = not mentioned = negative by default


def test_chexpert_study_level_groups_views(chexpert, tmp_path, read_back):
    table_path, root, frame = chexpert
    index = build_shards(
        read_chexpert(table_path, root, CHEXPERT_14),
        CHEXPERT_14,
        tmp_path,
        BuildOptions(level="study", split_by="none"),
        SMALL,
    )
    studies = frame["Path"].str.extract(r"(patient\d+)/(study\d+)").agg("_".join, axis=1)
    assert index.level == "study" and index.num_samples == studies.nunique()
    items = read_back(tmp_path, level="study", max_views=3)
    assert {item["id"] for item in items} == set(studies)
    for item in items:
        n = int(item["view_mask"].sum())
        assert n == min(3, int((studies == item["id"]).sum()))
        assert item["images"].shape == (3, 1, 32, 32)
        assert (item["images"][n:] == 0).all() and (item["view_type"][n:] == 0).all()


def test_padchest_labels_by_name_from_16_bit_pngs(padchest, tmp_path, read_back):
    table_path, images, frame = padchest
    index = build_shards(
        read_padchest(table_path, images, CXR_LT_2024_ALL),
        CXR_LT_2024_ALL,
        tmp_path,
        BuildOptions(split_by="none"),
        SMALL,
    )
    assert index.num_samples == len(frame) and index.num_skipped == 0
    items = {item["id"]: item for item in read_back(tmp_path)}
    row = frame.index[frame["Labels"].str.contains("'pleural effusion'")][0]
    labels = dict(zip(CXR_LT_2024_ALL.classes, items[frame["ImageID"][row][:-4]]["labels"].tolist()))
    assert labels["Pleural Effusion"] == 1.0 and labels["Pneumothorax"] == 0.0
    assert labels["Support Devices"] == -1.0  # PadChest has no single name for it
    image = items[frame["ImageID"][0][:-4]]["image"]
    assert float(image.std()) > 0.05  # 16-bit pixels windowed into 8-bit, not crushed to black


def test_padchest_unknown_label_name_is_an_error(padchest, tmp_path, edit_cell):
    table_path, images, _ = padchest
    bad = tmp_path / "bad.csv"
    edit_cell(table_path, bad, 3, "Labels", "['normal', 'pleural efusion']")
    with pytest.raises(InputError, match=r"bad.csv: line 5, column 'Labels': class 'pleural efusion'"):
        read_padchest(bad, images, CXR_LT_2024_ALL)


def test_csv_folder_with_column_map_and_bad_label_value(tmp_path, read_back, make_image):
    rows = ["file,pid,split,Pneumothorax,Mass"]
    for i in range(6):
        make_image(tmp_path / "img" / f"x{i}.png", seed=i)
        rows.append(f"x{i}.png,P{i // 2},{'train' if i < 4 else 'valid'},{i % 2},{'' if i == 0 else -1}")
    table = tmp_path / "table.csv"
    table.write_text("\n".join(rows) + "\n")
    columns = CsvColumns(path="file", patient_id="pid", split="split")
    target = get_schema("cxr-lt-2024-task2")
    index = build_shards(
        read_csv_folder(table, tmp_path / "img", target, columns), target, tmp_path / "out", BuildOptions(), SMALL
    )
    assert index.splits == {"train": 4, "dev": 2}
    items = {item["id"]: dict(zip(target.classes, item["labels"].tolist())) for item in read_back(tmp_path / "out")}
    assert items["x1"]["Pneumothorax"] == 1.0 and items["x1"]["Mass"] == -1.0 and items["x0"]["Mass"] == -1.0
    assert items["x0"]["Edema"] == -1.0  # not a column: unknown
    bad = tmp_path / "bad.csv"
    bad.write_text(table.read_text().replace("x3.png,P1,train,1,-1", "x3.png,P1,train,yes,-1"))
    with pytest.raises(
        InputError, match=r"bad.csv: column 'Pneumothorax': label values must be 1, 0, -1 or blank; got line 5 = 'yes'"
    ):
        read_csv_folder(bad, tmp_path / "img", target, columns)


def test_csv_folder_places_every_label_column_or_refuses(tmp_path):
    table = tmp_path / "nih.csv"
    table.write_text("path,patient_id,Effusion,Pleural_Thickening,Hernia\nx0.png,P0,1,0,1\nx1.png,P1,0,1,0\n")
    target = get_schema("nih-14")
    records = read_csv_folder(table, tmp_path, target, CsvColumns()).records  # NIH's own spelling
    labels = {c: [r.labels[target.index(c)] for r in records] for c in ("Effusion", "Pleural_Thickening", "Hernia")}
    assert labels == {"Effusion": [1.0, 0.0], "Pleural_Thickening": [0.0, 1.0], "Hernia": [1.0, 0.0]}
    with pytest.raises(
        InputError,
        match=r"nih.csv: label column\(s\) 'Effusion', 'Pleural_Thickening' match no "
        r"class of 'nih-14' under naming 'cxr-lt'.*--columns naming=",
    ):
        read_csv_folder(table, tmp_path, target, CsvColumns(naming="cxr-lt"))
