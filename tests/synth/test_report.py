"""synth report: files, counts before/after, pass rates, and the discriminator AUC's meaning."""

from __future__ import annotations

import json
import math

import numpy as np

from synth.config import SynthConfig
from synth.report import discriminator_auc, write_report
from synth.sample import SampleResult


def test_report_files_and_figures(sampled: tuple[SynthConfig, SampleResult]) -> None:
    cfg, result = sampled
    html = write_report(cfg)
    out = cfg.report_dir
    assert html == out / "report.html" and "discriminator AUC" in html.read_text()
    assert {"counts.png", "grid-Edema.png", "grid-Hernia.png", "report.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "report.json").read_text())
    edema = summary["counts"]["Edema"]
    added = sum(c.target == "Edema" or "Edema" in c.positives for c in result.candidates)
    assert (edema["before"], edema["added"], edema["after"]) == (17, added, 17 + added)
    assert summary["pass_rates"]["Hernia"]["generated"] == cfg.sample.per_class
    assert summary["pass_rates"]["Hernia"]["pass_rate"] == 1.0  # threshold 0 in the fixture
    assert summary["filter"]["threshold"] == 0.0
    auc = summary["discriminator"]["auc"]
    assert summary["discriminator"]["synthetic"] == len(result.candidates) and 0.0 <= auc <= 1.0


def test_discriminator_auc_is_half_for_one_distribution_and_one_for_separable_sets() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 16))
    same = rng.normal(size=(60, 16))
    shifted = rng.normal(loc=3.0, size=(60, 16))
    assert abs(discriminator_auc(real, same, folds=5, seed=0) - 0.5) < 0.15
    assert discriminator_auc(real, shifted, folds=5, seed=0) > 0.99
    assert math.isnan(discriminator_auc(real, shifted[:1], folds=5, seed=0))
