"""Report text into shards (issue #19 item 1): MIMIC-CXR report sections, the MIMIC source attaching
FINDINGS / IMPRESSION to every image of a study, and the report tree read for mining."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlt.data.mimic_reports import read_mimic_reports, report_sections, study_report_path
from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.shardset import read_index
from cxrlt.data.transforms import TransformConfig

# The real layout, trailing spaces and space-only blank lines included (mimic-formats.md).
STANDARD = "\n".join(
    [
        "                                 FINAL REPORT",
        " EXAMINATION:  CHEST (PA AND LAT)",
        " ",
        " INDICATION:  ___F with cough.",
        " ",
        " FINDINGS: ",
        " ",
        " The heart is mildly enlarged. Small left",
        " pleural effusion.",
        " ",
        " IMPRESSION: ",
        " ",
        " Cardiomegaly and small left effusion.",
        "",
    ]
)


def test_sections_of_the_real_layout_variants():
    sections = report_sections(STANDARD)
    assert sections["FINDINGS"] == "The heart is mildly enlarged. Small left pleural effusion."
    assert sections["IMPRESSION"] == "Cardiomegaly and small left effusion."
    assert sections["INDICATION"] == "___F with cough."
    inline = " FINDINGS:  Lungs are clear.\n IMPRESSIONS:  No acute process.\n"
    assert report_sections(inline) == {"FINDINGS": "Lungs are clear.", "IMPRESSION": "No acute process."}
    assert report_sections("FINAL REPORT\n CONCLUSION: Stable.\n") == {"IMPRESSION": "Stable."}
    # No headers at all: the text is kept as FINDINGS rather than lost.
    assert report_sections("   FINAL REPORT\n PA and lateral views: no pneumothorax.\n") == {
        "FINDINGS": "PA and lateral views: no pneumothorax."
    }
    assert report_sections(" IMPRESSION:\n \n") == {}


def test_report_path_takes_the_root_or_its_files_folder(tmp_path):
    expected = tmp_path / "files" / "p10" / "p10000032" / "s50414267.txt"
    assert study_report_path(tmp_path, "10000032", "s50414267") == expected
    assert study_report_path(tmp_path / "files", "10000032", "50414267") == expected


def test_every_image_carries_its_study_report_sections(report_shards, rehearsal_tree):
    index = read_index(report_shards)
    (source,) = index.sources
    assert source["with_report"] == source["records"] > 0
    labels = pd.read_csv(rehearsal_tree / "cxr-lt-2024" / "development_labeled_task1.csv", dtype=str)
    subject_of = dict(zip(labels["dicom_id"], labels["subject_id"]))
    config = ReaderConfig(split="dev", batch_size=64, transform=TransformConfig(size=64))
    items = [
        (image_id, study, findings, impression)
        for batch in make_loader(EvalReader(report_shards, config, 0, 1))
        for image_id, study, findings, impression in zip(
            batch["id"], batch["study_id"], batch["findings"], batch["impression"]
        )
    ]
    assert len(items) == index.splits["dev"]
    reports = rehearsal_tree / "mimic-cxr" / "2.0.0"
    for image_id, study, findings, impression in items:
        text = study_report_path(reports, subject_of[image_id], study).read_text(encoding="utf-8")
        sections = report_sections(text)
        assert impression == sections.get("IMPRESSION", "") and findings == sections.get("FINDINGS", "")
        # The real IU report text, as the file has it (wrapped lines rejoined).
        assert impression and " ".join(impression.split()[:3]) in " ".join(text.split())


def test_report_tree_reads_for_mining_with_image_ids_from_the_jpg_tree(rehearsal_tree):
    root = rehearsal_tree / "mimic-cxr" / "2.0.0"
    reports = read_mimic_reports(root, rehearsal_tree / "mimic-cxr-jpg" / "2.0.0")
    files = sorted(Path(root, "files").glob("p*/p*/s*.txt"))
    assert len(reports) == len(files)
    frame = pd.concat(pd.read_csv(p, dtype=str) for p in (rehearsal_tree / "cxr-lt-2024").glob("*.csv"))
    images_of = frame.groupby("study_id")["dicom_id"].apply(lambda s: tuple(sorted(set(s))))
    for report in reports:
        assert report.report_id.startswith("s") and report.image_ids == images_of[report.report_id]
        assert report.sections.get("IMPRESSION") or report.sections.get("FINDINGS")


def test_zeroshot_mine_reads_a_mimic_report_tree(rehearsal_tree, report_shards, tmp_path, capsys):
    from cxrlt.data.mining import read_examples
    from launch.main import main

    rules = Path(__file__).resolve().parents[2] / "configs" / "fewshot-iu-task3.toml"
    out = tmp_path / "examples.csv"
    args = ["zeroshot", "mine", "--reports", str(rehearsal_tree / "mimic-cxr" / "2.0.0"), "--rules", str(rules)]
    assert main([*args, "--out", str(out)]) == 2  # a MIMIC tree needs --images for image ids
    assert "--images" in capsys.readouterr().err
    assert main([*args, "--images", str(rehearsal_tree / "mimic-cxr-jpg" / "2.0.0"), "--out", str(out)]) == 0
    examples = read_examples(out)
    assert {e.label for e in examples} == {0, 1}
    assert all(e.report_id.startswith("s") for e in examples)
    positives = [e for e in examples if e.label == 1]
    # Each positive's evidence is a sentence of its study's real report, and its image is a rehearsal image.
    frame = pd.concat(pd.read_csv(p, dtype=str) for p in (rehearsal_tree / "cxr-lt-2024").glob("*.csv"))
    known = dict(zip(frame["dicom_id"], frame["study_id"]))
    assert positives and all(known[e.image_id] == e.report_id and e.evidence for e in positives)
