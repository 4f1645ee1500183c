"""Label schemas: the published class lists and groups, counts that match the real tables, and
harmonisation that marks a class a source lacks as unknown, never negative."""

import csv
import gzip
from collections import Counter

import numpy as np
import pytest

from cxrlt.labels import (
    CHEXPERT_14,
    CXR_LT_2023,
    CXR_LT_2024_ALL,
    CXR_LT_2024_TASK1,
    CXR_LT_2024_TASK2,
    CXR_LT_2024_TASK3,
    NIH_14,
    UNKNOWN,
    frequency_groups,
    get_schema,
    harmonisation_index,
    harmonise_labels,
)


def test_task1_has_the_40_classes_in_training_csv_order_with_9_15_16_groups():
    assert len(CXR_LT_2024_TASK1) == 40
    assert CXR_LT_2024_TASK1.classes[0] == "Adenopathy" and CXR_LT_2024_TASK1.classes[-1] == "Tuberculosis"
    assert list(CXR_LT_2024_TASK1.classes) == sorted(CXR_LT_2024_TASK1.classes)
    groups = Counter(CXR_LT_2024_TASK1.groups().values())
    assert groups == {"head": 9, "medium": 15, "tail": 16}
    g = CXR_LT_2024_TASK1.groups()
    # Boundary cases from the reference table: 11.4% is head, 0.90% is tail.
    assert g["Enlarged Cardiomediastinum"] == "head" and g["Lung Lesion"] == "tail"


def test_task2_keeps_submission_order_with_normal_between_mass_and_nodule():
    classes = CXR_LT_2024_TASK2.classes
    assert len(classes) == 26 and classes.index("Normal") == classes.index("Mass") + 1
    assert classes.index("Nodule") == classes.index("Normal") + 1
    assert CXR_LT_2024_TASK2.groups()["Normal"] == "head"


def test_union_is_task1_then_the_zero_shot_classes_which_belong_to_no_group():
    assert CXR_LT_2024_ALL.classes == CXR_LT_2024_TASK1.classes + CXR_LT_2024_TASK3.classes
    assert set(CXR_LT_2024_ALL.groups()) == set(CXR_LT_2024_TASK1.classes)
    assert CXR_LT_2024_TASK3.groups() == {}


def test_2023_uses_no_finding_and_the_winners_hand_split():
    assert "No Finding" in CXR_LT_2023.classes and "Normal" not in CXR_LT_2023.classes
    groups = CXR_LT_2023.groups()
    assert Counter(groups.values()) == {"head": 8, "medium": 10, "tail": 8}
    assert groups["Tortuous Aorta"] == "tail" and groups["Pneumothorax"] == "medium"


def test_frequency_group_thresholds():
    assert frequency_groups({"a": 10, "b": 9, "c": 1, "d": 0}, 100) == {
        "a": "head",
        "b": "medium",
        "c": "medium",
        "d": "tail",
    }


def test_nih_counts_match_the_real_data_entry_table(shared_data):
    with gzip.open(shared_data / "label-tables" / "Data_Entry_2017_v2020.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    counts = Counter(label for row in rows for label in row["Finding Labels"].split("|"))
    assert NIH_14.total == len(rows)
    assert dict(NIH_14.counts) == {c: counts[c] for c in NIH_14.classes}


def test_chexpert_counts_match_the_real_training_list(shared_data):
    with gzip.open(shared_data / "label-tables" / "chexpert_train.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    assert CHEXPERT_14.total == len(rows)
    assert dict(CHEXPERT_14.counts) == {c: sum(r[c] == "1.0" for r in rows) for c in CHEXPERT_14.classes}


def test_nih_to_task1_maps_renamed_classes_and_marks_missing_ones_unknown():
    labels = np.zeros((2, len(NIH_14)), dtype=np.float32)
    labels[0, NIH_14.index("Effusion")] = 1
    labels[1, NIH_14.index("Pleural_Thickening")] = 1
    out = harmonise_labels(labels, NIH_14, CXR_LT_2024_TASK1)
    t1 = CXR_LT_2024_TASK1
    assert out[0, t1.index("Pleural Effusion")] == 1 and out[1, t1.index("Pleural Thickening")] == 1
    assert out[0, t1.index("Atelectasis")] == 0
    # NIH never annotated support devices: unknown, not negative.
    assert (out[:, t1.index("Support Devices")] == UNKNOWN).all()
    assert (harmonisation_index(NIH_14, t1) >= 0).sum() == 14


def test_no_finding_and_normal_are_the_same_class_across_years_and_sources():
    index = harmonisation_index(CXR_LT_2023, CXR_LT_2024_TASK2)
    assert CXR_LT_2023.classes[index[CXR_LT_2024_TASK2.index("Normal")]] == "No Finding"
    assert harmonisation_index(CHEXPERT_14, CXR_LT_2024_TASK1)[CXR_LT_2024_TASK1.index("Normal")] == 0


def test_harmonise_rejects_a_matrix_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"expected \(N, 14\) for nih-14"):
        harmonise_labels(np.zeros((3, 5)), NIH_14, CXR_LT_2024_TASK1)


def test_unknown_names_get_a_hint():
    with pytest.raises(KeyError, match="known: cxr-lt-2024-task1"):
        get_schema("cxr-lt-2025")
    with pytest.raises(KeyError, match="did you mean 'Pleural Effusion'"):
        CXR_LT_2024_TASK1.index("Pleural effusion")
