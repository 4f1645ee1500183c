"""`cxrlt submit validate`: a correct submission passes; every format fault is reported with its line
or column and a non-zero exit status."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

from cxrlt.errors import InputError
from cxrlt.labels import TASK_SCHEMAS
from cxrlt.submission import FAULTS_KEPT_PER_KIND, expected_ids, validate_submission
from tests.cli import cxrlt

IDS = [f"{i:040x}"[-40:] for i in range(1, 31)]


@pytest.fixture
def ids_csv(tmp_path):
    """A development CSV in the challenge's shape (dicom_id first, paths and views beside it)."""
    frame = pd.DataFrame(
        {
            "dicom_id": IDS,
            "subject_id": [10000032 + i for i in range(len(IDS))],
            "study_id": [f"s5041426{i % 10}" for i in range(len(IDS))],
            "ViewPosition": ["PA"] * len(IDS),
        }
    )
    path = tmp_path / "development.csv"
    frame.to_csv(path, index=False)
    return path


def submission(task: str, seed: int = 0) -> pd.DataFrame:
    classes = TASK_SCHEMAS[task].classes
    frame = pd.DataFrame(np.random.default_rng(seed).random((len(IDS), len(classes))), columns=classes)
    frame.insert(0, "dicom_id", IDS)
    return frame


@pytest.mark.parametrize("task", ["t1", "t2", "t3"])
def test_a_correct_submission_is_valid_as_csv_and_as_zip(tmp_path, ids_csv, task):
    path = tmp_path / "submission.csv"
    submission(task).to_csv(path, index=False)
    run = cxrlt("submit", "validate", "--task", task, "--ids", ids_csv, path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"valid {task} submission, 30 rows" in run.stdout
    with zipfile.ZipFile(tmp_path / "submission.zip", "w") as archive:
        archive.write(path, "submission.csv")
    assert cxrlt("submit", "validate", "--task", task, "--ids", ids_csv, tmp_path / "submission.zip").returncode == 0


def test_every_fault_is_reported_with_line_or_column(tmp_path, ids_csv):
    frame = submission("t2").astype(object)
    frame.loc[3, "Edema"] = np.nan
    frame.loc[4, "Mass"] = 1.5
    frame.loc[5, "Nodule"] = "high"
    frame.loc[6, "dicom_id"] = IDS[0]  # duplicate of line 2; IDS[6] is then missing
    frame = frame.rename(columns={"Pleural Effusion": "Pleural effusion"}).drop(columns=["Fibrosis"])
    frame["Bulla"] = 0.1
    frame = pd.concat([frame, frame.iloc[[0]].assign(dicom_id="stranger")])
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    report = validate_submission(path, "t2", IDS)
    faults = {str(f) for f in report.faults}
    assert "[value] line 5, column 'Edema': empty value" in faults
    assert "[value] line 6, column 'Mass': 1.5 is outside [0, 1]" in faults
    assert "[value] line 7, column 'Nodule': not a probability: 'high'" in faults
    assert f"[id] line 8: duplicate '{IDS[0]}' (first on line 2)" in faults
    assert f"[id] missing row for '{IDS[6]}'" in faults
    assert "[id] line 32: 'stranger' is not in the id list" in faults
    assert (
        "[column] line 1, column 'Pleural Effusion': missing class column; 'Pleural effusion' looks like a "
        "misspelling of it" in faults
    )
    assert "[column] line 1, column 'Fibrosis': missing class column" in faults
    assert "[column] line 1, column 'Bulla': not a class of this task" in faults
    run = cxrlt("submit", "validate", "--task", "t2", "--ids", ids_csv, path)
    assert run.returncode == 1 and "INVALID for t2" in run.stdout


def test_header_faults(tmp_path):
    frame = submission("t3")
    path = tmp_path / "s.csv"
    frame.rename(columns={"dicom_id": "image_id"}).to_csv(path, index=False)
    assert "the first column must be 'dicom_id', found 'image_id'" in str(
        validate_submission(path, "t3", IDS).faults[0]
    )
    frame.rename(columns={"Hilum": "Bulla"}).to_csv(path, index=False)
    faults = [str(f) for f in validate_submission(path, "t3", IDS).faults]
    assert "[header] line 1, column 'Bulla': duplicate column" in faults
    path.write_text("")
    assert str(validate_submission(path, "t3", IDS).faults[0]) == "[file] the file is empty"


def test_reordered_columns_are_only_a_warning(tmp_path):
    frame = submission("t1")
    path = tmp_path / "s.csv"
    frame[["dicom_id", *reversed(TASK_SCHEMAS["t1"].classes)]].to_csv(path, index=False)
    report = validate_submission(path, "t1", IDS)
    assert report.ok and report.warnings == ["class columns are not in the task's order (they are matched by name)"]


def test_a_zip_without_exactly_one_csv_is_an_input_error(tmp_path, ids_csv):
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as archive:
        archive.writestr("a.csv", "dicom_id\n")
        archive.writestr("b.csv", "dicom_id\n")
    run = cxrlt("submit", "validate", "--task", "t3", "--ids", ids_csv, tmp_path / "s.zip")
    assert run.returncode == 2 and "the zip must hold exactly one .csv" in run.stderr


@pytest.mark.parametrize("member", ["sub/submission.csv", "../../x.csv"])
def test_a_zip_whose_csv_is_not_at_the_top_level_is_refused(tmp_path, ids_csv, member):
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as archive:
        archive.writestr(member, submission("t1").to_csv(index=False))
    with pytest.raises(InputError, match=r"s.zip: the .csv must be at the top level of the zip, found '"):
        validate_submission(tmp_path / "s.zip", "t1", IDS)


def test_a_duplicate_id_in_the_id_list_is_refused_naming_its_line(tmp_path):
    path = tmp_path / "ids.csv"
    pd.DataFrame({"dicom_id": [*IDS[:3], IDS[1]]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=rf"ids.csv: duplicate dicom_id: {IDS[1]} \(line 3\), {IDS[1]} \(line 5\)"):
        expected_ids(path)


def test_messages_quote_at_most_a_short_prefix_of_a_huge_cell(tmp_path):
    frame = submission("t1").astype(object)
    frame.loc[0, "Mass"] = "9" * 9_000_000
    frame.loc[1, "Edema"] = "x" * 9_000_000
    frame.loc[2, "dicom_id"] = "y" * 9_000_000
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    faults = [str(f) for f in validate_submission(path, "t1", IDS).faults]
    assert len(faults) == 4 and all(len(f) < 200 for f in faults)
    assert "[value] line 2, column 'Mass': not a probability: '" + "9" * 60 + "'... (9000000 characters)" in faults
    assert "[value] line 3, column 'Edema': not a probability: '" + "x" * 60 + "'... (9000000 characters)" in faults


def test_a_header_longer_than_csvs_field_limit_is_a_fault_not_a_traceback(tmp_path, ids_csv):
    # One 200 KiB header field: Python's csv module refuses fields over 128 KiB with an exception.
    path = tmp_path / "s.csv"
    frame = submission("t1").rename(columns={"Edema": "E" * 200_000})
    frame.to_csv(path, index=False)
    assert [str(f) for f in validate_submission(path, "t1", IDS).faults] == [
        "[header] line 1: longer than 64 KiB; it holds only 'dicom_id' and the class names"
    ]
    run = cxrlt("submit", "validate", "--task", "t1", "--ids", ids_csv, path)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"{path}: INVALID for t1: 1 faults (1 header)" in run.stdout


def test_a_csv_over_the_size_cap_is_refused_before_it_is_read(tmp_path):
    # A 300 MB CSV deflated into a ~3 MB zip (a zip bomb in small): refused by its declared size.
    header = ",".join(["dicom_id", *TASK_SCHEMAS["t2"].classes]) + "\n"
    block = (IDS[0] + ",0.5" * len(TASK_SCHEMAS["t2"].classes) + "\n").encode() * 10_000
    with (
        zipfile.ZipFile(tmp_path / "s.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("submission.csv", "w", force_zip64=True) as member,
    ):
        member.write(header.encode())
        for _ in range(300 * 10**6 // len(block)):
            member.write(block)
    with pytest.raises(InputError, match=r"s\.zip: submission\.csv is 28\d MiB uncompressed; .* at most 256 MiB"):
        validate_submission(tmp_path / "s.zip", "t2", IDS)
    plain = tmp_path / "s.csv"
    plain.write_text(header)
    os.truncate(plain, 300 * 10**6)  # sparse: the size is all that is looked at
    with pytest.raises(InputError, match=r"s\.csv is 286 MiB uncompressed; .* at most 256 MiB"):
        validate_submission(plain, "t2", IDS)


# Validating a 13 MiB submission in a process of its own, printing how far the peak RSS rose.
_MEMORY_SCRIPT = """
import sys
from pathlib import Path
from cxrlt.labels import TASK_SCHEMAS
from cxrlt.submission import validate_submission
path, rows = Path(sys.argv[1]), int(sys.argv[2])
classes = TASK_SCHEMAS["t2"].classes
ids = [f"{i:040x}" for i in range(rows)]

def peak_rss_mib():
    # VmHWM: this process's own peak (getrusage's ru_maxrss carries the parent's peak across exec).
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024

with path.open("w") as f:
    f.write(",".join(["dicom_id", *classes]) + "\\n")
    f.writelines(f"{i}{',0.5' * len(classes)}\\n" for i in ids)
before = peak_rss_mib()
report = validate_submission(path, "t2", ids)
assert report.ok and report.n_rows == rows, report.faults[:3]
print(peak_rss_mib() - before)
"""


def test_validation_streams_the_rows_in_bounded_memory(tmp_path):
    # Reading the whole 13 MiB file as text, then as one frame, raised the peak RSS by ~150 MiB.
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "s.csv"), "100000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) < 80, f"peak RSS rose by {done.stdout.strip()} MiB"


def test_faults_past_the_kept_number_are_counted(tmp_path, ids_csv):
    frame = submission("t3").astype(object)
    frame = pd.concat([frame] * 50, ignore_index=True)  # 1500 rows: 1470 duplicate ids
    frame["Hilum"] = "high"
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    report = validate_submission(path, "t3", IDS)
    assert report.counts == {"id": 1470, "value": 1500}
    assert len(report.faults) == 2 * FAULTS_KEPT_PER_KIND
    run = cxrlt("submit", "validate", "--task", "t3", "--ids", ids_csv, path)
    assert "[value] ... and 1480 more" in run.stdout
    assert "INVALID for t3: 2970 faults (1470 id, 1500 value)" in run.stdout
