"""Byte-stable CSV writing (gzip without a timestamp) and the README of the rehearsal tree."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd

from cxrlt.data.rehearsal_reports import MESH_RULES, NIH_CLASSES


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """`frame` as CSV (gzip when the name ends in .gz, with mtime 0 so a seed always gives the same bytes)."""
    data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    if path.suffix == ".gz":
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as f:
            f.write(data)
        data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _mapping_table() -> str:
    lines = ["| MeSH descriptor | qualifiers required | class(es) |", "|---|---|---|"]
    for descriptor, needed, classes in MESH_RULES:
        lines.append(f"| {descriptor} | {', '.join(needed) or '(any)'} | {', '.join(classes)} |")
    return "\n".join(lines)


def write_readme(path: Path, manifest: dict) -> None:
    sizes = "\n".join(f"- {split}: {counts}" for split, counts in manifest["studies_by_size"].items())
    missing = ", ".join(manifest["classes_without_positives"]) or "none"
    text = f"""# MIMIC-CXR-LT rehearsal set (structural rehearsal)

This tree has the file layout, file names, column names and value formats of MIMIC-CXR-JPG 2.0.0,
MIMIC-CXR 2.0.0 reports, the CXR-LT 2024 label CSVs and MIMIC-IV-ED 2.2, so the real CXR-LT recipe can be
rehearsed end to end without credentialed data. **It is a structural rehearsal**: the images and the
report texts are real, but patients, studies, views, dates, times, ED stays and vitals are invented, and
labels were assembled as described below. Scores on it say nothing about clinical performance.

Made by `cxrlt rehearsal make` with options {manifest["options"]}.

## Provenance

- Images: NIH Clinical Center ChestX-ray14 (the 621-image starter sample embedded in cxrlt, 256x256);
  the NIH images carry no restrictions on use. Please cite Wang X, Peng Y, Lu L, Lu Z, Bagheri M,
  Summers RM. "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised
  Classification and Localization of Common Thorax Diseases." IEEE CVPR 2017, and acknowledge the NIH
  Clinical Center.
- Reports: Indiana University chest X-ray collection (Open-i, U.S. National Library of Medicine),
  NLMCXR_reports.tgz: INDICATION / COMPARISON / FINDINGS / IMPRESSION text and curated MeSH terms,
  rewritten in MIMIC-CXR report layout (IU's "XXXX" de-identification shown as MIMIC's "___").

## Labels

CXR-LT labels are study-level: a study's vector is the union of its images' NIH labels, copied to every
image. NIH names map onto CXR-LT 2024 names: Effusion -> Pleural Effusion, Pleural_Thickening -> Pleural
Thickening, No Finding -> Normal (Normal only when no image of the study has an NIH finding); the other
NIH names are spelled the same. Each study is paired with the IU report whose MeSH terms best match its
NIH labels (Jaccard over {", ".join(NIH_CLASSES)}). Classes NIH never annotated are
added when the paired report's MeSH terms state them, by this table (rows mapping onto NIH's own classes
are used only for pairing; the NIH labels stay the truth for those):

{_mapping_table()}

The Task-3 classes (Bulla, Cardiomyopathy, Hilum, Osteopenia, Scoliosis) never appear in the CXR-LT CSVs;
their labels for the development split are in `answers/development_labeled_task3.csv` (rehearsal only:
the real challenge never released them). No MeSH term states cardiomyopathy, so it has no positives.

Task-1 classes with no positive in any split (all-zero columns, as a class absent from a split would be):
{missing}.

## Contents

- `mimic-cxr-jpg/2.0.0/files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg` (8-bit JPEG, quality 95, 256 px) and
  `mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv.gz`
- `mimic-cxr/2.0.0/files/pNN/pSUBJECT/sSTUDY.txt`: one report per study
- `cxr-lt-2024/`: train_labeled.csv, development_labeled_task1.csv, development_labeled_task2.csv (a gold
  subset: about half of the development studies), development_task3.csv (ids only),
  test_labeled_task1.csv
- `mimic-iv-ed/2.2/ed/edstays.csv.gz`, `triage.csv.gz`
- `nih-external/`: held-out images in NIH's own layout (Data_Entry_2017_v2020.csv + images/)
- `vindr-external/`: other held-out images in VinDr-CXR's layout (annotations/image_labels_train.csv with
  three agreeing invented readers per image, train/*.dicom: 12-bit DICOM, every other one MONOCHROME1),
  their NIH labels on VinDr's names
- `chexpert-external/`: others in CheXpert's layout (CheXpert-v1.0-small/train.csv + JPEGs), their NIH
  labels on CheXpert's observations (positives 1.0, other cells blank)
- `answers/development_labeled_task3.csv`, `manifest.json` (counts; written last)
- `models/`: stand-ins for the recipe's local ImageNet and DINOv2 checkpoints ({", ".join(manifest["models"])}):
  timm state dicts with a 3-channel stem and a 224 px grid, and a Hugging Face folder in timm's layout
  (DINOv2, 518 px grid), but random weights (nothing is downloaded)

Images per split: {manifest["images"]}. Studies per split: {manifest["studies"]}. Studies by number of
images:
{sizes}
"""
    path.write_text(text, encoding="utf-8")
