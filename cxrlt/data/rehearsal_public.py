"""The rehearsal's public-dataset stand-ins: held-out embedded NIH images in VinDr-CXR's and CheXpert's
release layouts, for the recipe's pretraining chain.

The real recipe pretrains on public sets before MIMIC (team B: NIH + CheXpert + VinDr + BRAX), each read
by its own source (cxrlt.data.sources). These trees have those releases' layouts, so `cxrlt shard
vindr-cxr` and `cxrlt shard chexpert` run on them as on the downloads. Labels are the images' NIH labels
on each release's names where the meaning agrees; nothing here measures anything clinical.

VinDr-CXR (`vindr-external/`): `annotations/image_labels_train.csv` (image_id, rad_id, 28 label columns)
and `train/<image_id>.dicom`:
- pixels: the real 8-bit NIH image scaled to 12-bit detector values (0-4000), stored as 16-bit
  MONOCHROME2, or inverted as MONOCHROME1 for every other image, with a window over the whole range;
- labels: Mass and Nodule both "Nodule/Mass", Hernia has no column, "No finding" for NIH's No Finding,
  every other column 0 as VinDr marks what a reader did not see. The three readers (invented ids R1-R3)
  agree: a structural rehearsal of the merge, not of reader disagreement.

CheXpert (`chexpert-external/`): `CheXpert-v1.0-small/train.csv` (Path, Sex, Age, Frontal/Lateral, AP/PA,
14 observations) and `CheXpert-v1.0-small/train/patientNNNNN/study1/view1_frontal.jpg`: Effusion is
"Pleural Effusion", Mass and Nodule "Lung Lesion", Pleural_Thickening "Pleural Other", No Finding "No
Finding"; a positive is 1.0 and every other cell blank (not mentioned), as CheXpert's labeller writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrlt.data.dicom import write_dx_dicom
from cxrlt.data.rehearsal_files import write_csv
from cxrlt.labels import CHEXPERT_14, VINDR_CXR

READERS = ("R1", "R2", "R3")
DETECTOR_MAX = 4000  # 12-bit values, as VinDr's detectors store them
# NIH names whose VinDr column differs in spelling; the others are spelled alike.
_NIH_TO_VINDR = {
    "Effusion": "Pleural effusion",
    "Fibrosis": "Pulmonary fibrosis",
    "Pleural_Thickening": "Pleural thickening",
    "Mass": "Nodule/Mass",
    "Nodule": "Nodule/Mass",
    "No Finding": "No finding",
}


_NIH_TO_CHEXPERT = {
    "Effusion": "Pleural Effusion",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
}


def vindr_row(nih_labels: str) -> dict[str, int]:
    """VinDr's 28 columns (0/1) for an image with NIH's `Finding Labels` text ("A|B" or "No Finding")."""
    row = dict.fromkeys(VINDR_CXR.classes, 0)
    for name in nih_labels.split("|"):
        column = _NIH_TO_VINDR.get(name, name)
        if column in row:
            row[column] = 1
    return row


def chexpert_row(nih_labels: str) -> dict[str, float | None]:
    """CheXpert's 14 observations for NIH's `Finding Labels` text: 1.0 where stated, blank (None) elsewhere."""
    row: dict[str, float | None] = dict.fromkeys(CHEXPERT_14.classes)
    for name in nih_labels.split("|"):
        column = _NIH_TO_CHEXPERT.get(name, name)
        if column in row:
            row[column] = 1.0
    return row


def vindr_dicom(gray: np.ndarray, path: Path, monochrome1: bool) -> None:
    """An 8-bit grey image as a DX DICOM file of 12-bit detector values (see the module docstring)."""
    values = np.round(gray.astype(np.float64) * (DETECTOR_MAX / 255.0)).astype(np.uint16)
    if monochrome1:
        values = DETECTOR_MAX - values
    photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    write_dx_dicom(values, path, photometric, window=(DETECTOR_MAX / 2, DETECTOR_MAX))


def write_vindr_tree(root: Path, frame: pd.DataFrame, rows: list[int], images: Path) -> None:
    """`root/annotations/image_labels_train.csv` and `root/train/*.dicom` for starter rows `rows`."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    records = []
    for k, row in enumerate(rows):
        image_id = Path(frame.at[row, "Image Index"]).stem
        with Image.open(images / frame.at[row, "Image Index"]) as image:
            vindr_dicom(np.asarray(image.convert("L")), root / "train" / f"{image_id}.dicom", monochrome1=k % 2 == 1)
        labels = vindr_row(frame.at[row, "Finding Labels"])
        records += [{"image_id": image_id, "rad_id": reader, **labels} for reader in READERS]
    write_csv(pd.DataFrame(records), root / "annotations" / "image_labels_train.csv")


def write_chexpert_tree(root: Path, frame: pd.DataFrame, rows: list[int], images: Path) -> None:
    """`root/CheXpert-v1.0-small/train.csv` and its JPEGs for starter rows `rows`, one study per patient."""
    release = root / "CheXpert-v1.0-small"
    records = []
    for k, row in enumerate(rows, start=1):
        path = f"CheXpert-v1.0-small/train/patient{k:05d}/study1/view1_frontal.jpg"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(images / frame.at[row, "Image Index"]) as image:
            image.convert("L").save(root / path, "JPEG", quality=95)
        sex = {"M": "Male", "F": "Female"}.get(frame.at[row, "Patient Gender"], "Unknown")
        meta = {"Path": path, "Sex": sex, "Age": frame.at[row, "Patient Age"], "Frontal/Lateral": "Frontal"}
        view = frame.at[row, "View Position"]
        records.append({**meta, "AP/PA": view, **chexpert_row(frame.at[row, "Finding Labels"])})
    write_csv(pd.DataFrame(records), release / "train.csv")
