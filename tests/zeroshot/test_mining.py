"""Keyword mining on the real IU X-ray reports: rules, negation, sampling, the command and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlt.config import ConfigError, load_config
from cxrlt.data.mining import MiningConfig, affirmed_sentence, mine_examples, read_examples
from cxrlt.data.reports import Report, read_iu_reports

RULES = Path(__file__).resolve().parents[2] / "configs" / "fewshot-iu-task3.toml"


@pytest.fixture(scope="module")
def reports(shared_data):
    return read_iu_reports(shared_data / "reports" / "NLMCXR_reports.tgz")


@pytest.fixture(scope="module")
def rules():
    return load_config(MiningConfig, RULES)


def test_reports_are_read_with_sections_images_and_mesh(reports):
    assert len(reports) == 3955
    first = next(r for r in reports if r.report_id == "CXR1")
    assert first.sections["INDICATION"] == "Positive TB test" and first.mesh == ("normal",)
    assert first.image_ids == ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001")


def test_scoliosis_rule_agrees_with_the_curators_mesh_terms(reports, rules):
    mined = {r.report_id for r in reports if affirmed_sentence(r, rules.rules["Scoliosis"], rules)}
    mesh = {r.report_id for r in reports if any("scoliosis" in term.lower() for term in r.mesh)}
    hits = len(mined & mesh)
    assert hits / len(mined) >= 0.9 and hits / len(mesh) >= 0.9, (len(mined), len(mesh), hits)


def test_negated_mentions_are_not_positives(reports, rules):
    negated = [r for r in reports if "no scoliosis" in " ".join(r.sections.values()).lower()]
    for report in negated:
        sentence = affirmed_sentence(report, rules.rules["Scoliosis"], rules)
        assert sentence is None or "no scoliosis" not in sentence.lower()
    fake = Report("x", {"FINDINGS": "There is no evidence of scoliosis. Heart normal."}, ("i",))
    assert affirmed_sentence(fake, rules.rules["Scoliosis"], rules) is None
    fake = Report("y", {"FINDINGS": "No effusion. Mild dextroscoliosis of the thoracic spine."}, ("i",))
    assert affirmed_sentence(fake, rules.rules["Scoliosis"], rules) == "Mild dextroscoliosis of the thoracic spine"


def test_mining_draws_a_few_reports_per_class_deterministically(reports, rules):
    examples = mine_examples(reports, rules)
    again = mine_examples(reports, rules)
    assert examples == again
    for name in rules.rules:
        positives = {e.report_id for e in examples if e.class_name == name and e.label == 1}
        negatives = {e.report_id for e in examples if e.class_name == name and e.label == 0}
        assert 1 <= len(positives) <= rules.max_positives and len(negatives) == rules.max_negatives
        assert not positives & negatives
    by_id = {r.report_id: r for r in reports}
    for e in (e for e in examples if e.label == 1):
        assert e.image_id in by_id[e.report_id].image_ids and e.evidence


def test_mine_command_writes_examples_and_names_bad_keys(shared_data, tmp_path, cli):
    out = tmp_path / "examples.csv"
    tgz = shared_data / "reports" / "NLMCXR_reports.tgz"
    status, stdout, err = cli(
        "zeroshot", "mine", "--reports", tgz, "--rules", RULES, "--out", out, "--set", "max_positives=3"
    )
    assert status == 0, err
    examples = read_examples(out)
    assert {e.class_name for e in examples} == {"Bulla", "Cardiomyopathy", "Hilum", "Osteopenia", "Scoliosis"}
    assert sum(e.label for e in examples if e.class_name == "Scoliosis") >= 3  # 3 reports, 1+ images each
    assert "Scoliosis: " in stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[rules.Bulla]\nterm = ["bulla"]\n', encoding="utf-8")
    status, _, err = cli("zeroshot", "mine", "--reports", tgz, "--rules", bad, "--out", out)
    assert status == 2 and "rules.Bulla" in err
    with pytest.raises(ConfigError):
        load_config(MiningConfig, bad)
