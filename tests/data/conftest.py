"""Fixtures for the data tests: miniature raw datasets in each source's real layout.

Pixels are generated (tiny, seeded); tables are real where the real table is public (NIH Data_Entry,
CheXpert train.csv and PadChest rows from ../shared/data/label-tables, the embedded starter) and a
synthetic MIMIC/CXR-LT miniature otherwise, with the real column names and id formats (dicom ids of
five 8-hex groups, 8-digit subject ids, "s"-prefixed 8-digit study ids, files/pXX/pSUBJECT/sSTUDY/).
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlt.labels import CXR_LT_2024_TASK1

LABEL_TABLES = Path("/work/shared/data/label-tables")
PX = 48


def write_image(path: Path, seed: int, size: tuple[int, int] = (PX + 8, PX), mode: str = "L") -> None:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 200, size[0])[None, :] + np.linspace(0, 50, size[1])[:, None]
    pixels = gradient + rng.normal(0, 10, (size[1], size[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray((np.clip(pixels, 0, 255) * 16).astype(np.uint16)).save(path)
    else:
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(path)


def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not an image at all")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@dataclass
class Mimic:
    root: Path
    train: Path
    dev: Path
    metadata: Path
    reports: Path
    edstays: Path
    triage: Path
    frame: pd.DataFrame
    bad: dict[str, str]

    @property
    def dev_rows(self) -> pd.Series:
        return self.frame["study_id"] == self.frame["study_id"].iloc[-1]


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(rng.integers(0, 16**8)):08x}" for _ in range(5))


@pytest.fixture(scope="session")
def mimic(tmp_path_factory: pytest.TempPathFactory) -> Mimic:
    """8 patients, 14 train studies of 1-4 views + one unlabelled 5-view dev study; 3 bad images."""
    root = tmp_path_factory.mktemp("mimic")
    rng = np.random.default_rng(7)
    rows, meta_rows, stays, triage = [], [], [], []
    views_cycle = [["PA", "LATERAL"], ["AP"], ["LATERAL", "PA", "LL"], ["AP", "LATERAL", "PA", "LL", "AP"]]
    study_number = 50000000
    for p in range(8):
        subject = 10000032 + p * 1117
        for s in range(2 if p < 7 else 1):
            study_number += 414267 + p
            study = f"s{study_number}"
            views = views_cycle[(p + s) % len(views_cycle)]
            labels = (rng.random(len(CXR_LT_2024_TASK1)) < 0.15).astype(int)
            date = f"2180{(p % 9) + 1:02d}{(s % 27) + 1:02d}"
            for v, view in enumerate(views):
                dicom = _dicom_id(rng)
                fpath = f"files/p{str(subject)[:2]}/p{subject}/{study}/{dicom}.jpg"
                write_image(root / "jpg" / fpath, seed=int(rng.integers(1 << 30)))
                rows.append(
                    {
                        "dicom_id": dicom,
                        "subject_id": str(subject),
                        "study_id": study,
                        "ViewPosition": view if v != 1 else "",
                        "ViewCodeSequence_CodeMeaning": "postero-anterior",
                        "fpath": fpath,
                        **dict(zip(CXR_LT_2024_TASK1.classes, labels)),
                    }
                )
                meta_rows.append(
                    {
                        "dicom_id": dicom,
                        "subject_id": subject,
                        "study_id": study[1:],
                        "ViewPosition": view,
                        "StudyDate": date,
                        "StudyTime": f"{10 + v}3015.123",
                    }
                )
            report = root / "reports" / f"files/p{str(subject)[:2]}/p{subject}/{study}.txt"
            report.parent.mkdir(parents=True, exist_ok=True)
            indication = f"Patient {p} with cough and fever // ? pneumonia" if s == 0 else ""
            report.write_text(f"EXAMINATION:  CHEST (PA AND LAT)\n\nINDICATION:  {indication}\n\nFINDINGS:  clear.\n")
            if s == 0:
                stay = 30000000 + p
                stays.append(
                    {
                        "subject_id": subject,
                        "hadm_id": "",
                        "stay_id": stay,
                        "intime": f"{date[:4]}-{date[4:6]}-{date[6:]} 08:00:00",
                        "outtime": f"{date[:4]}-{date[4:6]}-{date[6:]} 23:00:00",
                        "gender": "F" if p % 2 else "M",
                    }
                )
                triage.append(
                    {
                        "subject_id": subject,
                        "stay_id": stay,
                        "temperature": 98.1 + p / 10,
                        "heartrate": 80 + p,
                        "resprate": 16,
                        "o2sat": "" if p == 0 else 97,
                        "sbp": 120,
                        "dbp": 80,
                        "pain": 3,
                        "acuity": 2,
                        "chiefcomplaint": "Cough",
                    }
                )
    frame = pd.DataFrame(rows)
    in_dev = frame["study_id"] == frame["study_id"].iloc[-1]  # the last patient's one 5-view study
    dev_frame = frame[in_dev][
        ["dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath"]
    ]
    train_frame = frame[~in_dev]
    train, dev = root / "train_labeled.csv", root / "development_task3.csv"
    train_frame.to_csv(train, index=False)
    dev_frame.to_csv(dev, index=False)
    metadata = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    pd.DataFrame(meta_rows).to_csv(metadata, index=False)
    edstays, triage_path = root / "edstays.csv.gz", root / "triage.csv.gz"
    pd.DataFrame(stays).to_csv(edstays, index=False)
    pd.DataFrame(triage).to_csv(triage_path, index=False)
    bad = {}
    for reason, i, damage in (("corrupt", 3, corrupt), ("truncated", 5, truncate)):
        damage(root / "jpg" / train_frame.iloc[i]["fpath"])
        bad[train_frame.iloc[i]["dicom_id"]] = reason
    (root / "jpg" / train_frame.iloc[7]["fpath"]).unlink()
    bad[train_frame.iloc[7]["dicom_id"]] = "missing"
    return Mimic(root / "jpg", train, dev, metadata, root / "reports", edstays, triage_path, frame, bad)


def _head_rows(name: str, n: int) -> str:
    with gzip.open(LABEL_TABLES / name, "rt", newline="") as f:
        return "".join(line for _, line in zip(range(n + 1), f))


@pytest.fixture(scope="session")
def nih(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """The first 30 real Data_Entry rows, images generated in NIH's images_00X/images/ nesting, one missing."""
    root = tmp_path_factory.mktemp("nih")
    table = root / "Data_Entry_2017_v2020.csv"
    table.write_text(_head_rows("Data_Entry_2017_v2020.csv.gz", 30))
    frame = pd.read_csv(table)
    for i, name in enumerate(frame["Image Index"]):
        if i != 4:
            write_image(root / "images" / f"images_00{1 + i % 2}" / "images" / name, seed=i, mode="L")
    return table, root / "images", frame


@pytest.fixture(scope="session")
def chexpert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """The first 40 real CheXpert train.csv rows (uncertain and blank cells included), images generated."""
    root = tmp_path_factory.mktemp("chexpert")
    table = root / "train.csv"
    table.write_text(_head_rows("chexpert_train.csv.gz", 40))
    frame = pd.read_csv(table)
    for i, path in enumerate(frame["Path"]):
        write_image(root / path, seed=100 + i)
    return table, root, frame


@pytest.fixture(scope="session")
def padchest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """The first 40 real PadChest rows (all 35 columns), 16-bit PNGs under images/<ImageDir>/."""
    root = tmp_path_factory.mktemp("padchest")
    table = root / "padchest.csv"
    # Report cells hold newlines inside quotes, so take rows through the CSV parser, not by lines.
    frame = pd.read_csv(LABEL_TABLES / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", nrows=40, dtype=str)
    frame.to_csv(table, index=False)
    for i, (folder, image) in enumerate(zip(frame["ImageDir"], frame["ImageID"])):
        write_image(root / "images" / folder / image, seed=200 + i, mode="I;16")
    return table, root / "images", frame


def edit_csv_cell(source: Path, target: Path, row: int, column: str, value: str) -> None:
    """Copy a CSV with one cell (0-based data row) replaced, keeping every other byte of formatting."""
    with open(source, newline="") as f:
        table = list(csv.reader(f))
    table[row + 1][table[0].index(column)] = value
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(table)
    target.write_text(buffer.getvalue())


@pytest.fixture(scope="session")
def read_back():
    """read_back(out, split=None, level="image") -> every evaluation item of a shard set, in index order."""
    from cxrlt.data.readers import EvalReader, ReaderConfig
    from cxrlt.data.shardset import read_index
    from cxrlt.data.transforms import TransformConfig

    def read(out: Path, split: str | None = None, level: str = "image", max_views: int = 4) -> list[dict]:
        splits = [split] if split else list(read_index(out).splits)
        items = []
        for name in splits:
            config = ReaderConfig(
                level=level, split=name, batch_size=5, max_views=max_views, transform=TransformConfig(size=32)
            )
            for batch in EvalReader(out, config, rank=0, world_size=1):
                for i in range(len(batch["id"])):
                    items.append({key: value[i] for key, value in batch.items()})
        return items

    return read


@pytest.fixture(scope="session")
def make_image():
    """make_image(path, seed, size=(w, h), mode="L" | "I;16"): write a small generated X-ray-like image."""
    return write_image


@pytest.fixture(scope="session")
def edit_cell():
    """edit_cell(source, target, row, column, value): copy a CSV with one data cell replaced."""
    return edit_csv_cell


@pytest.fixture(scope="session")
def starter_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded starter (NIH-14) at 32 px, 60 samples per shard; readers' tests read it, never write it."""
    from cxrlt.data.build import BuildOptions, build_shards
    from cxrlt.data.sources.starter import read_starter
    from cxrlt.data.writer import WriterOptions
    from cxrlt.labels import NIH_14

    out = tmp_path_factory.mktemp("starter-shards")
    build_shards(read_starter(NIH_14), NIH_14, out, BuildOptions(), WriterOptions(max_size=32, samples_per_shard=60))
    return out
