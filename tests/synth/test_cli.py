"""`cxrlt synth train|sample|report CONFIG --set ...` through the command line's own entry point."""

from __future__ import annotations

from pathlib import Path

from launch.main import main
from tests.synth.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_train_sample_report_from_the_demo_config(starter: Path, classifier: Path, tmp_path: Path, capsys) -> None:
    sets = [
        a
        for o in [
            *TINY,
            f"data.shards={starter}",
            f"run.out_dir={tmp_path}",
            "train.steps=2",
            f"filter.classifier={classifier}",
            "filter.threshold=0.0",
            "sample.per_class=2",
        ]
        for a in ("--set", o)
    ]
    demo = ROOT / "configs" / "synth-demo.toml"
    assert main(["synth", "train", str(demo), *sets]) == 0
    assert main(["synth", "train", str(demo), *sets]) == 2  # a checkpoint exists: needs --resume
    assert "pass --resume" in capsys.readouterr().err
    assert main(["synth", "train", str(demo), *sets, "--resume"]) == 0
    assert main(["synth", "sample", str(demo), *sets]) == 0
    assert "4 of 4 candidates kept" in capsys.readouterr().out
    assert main(["synth", "report", str(demo), *sets]) == 0
    assert (tmp_path / "report" / "report.html").is_file()
    assert (tmp_path / "synthetic" / "_index.json").is_file()


def test_unknown_config_key_is_a_one_line_error(capsys) -> None:
    assert main(["synth", "sample", str(ROOT / "configs" / "synth-demo.toml"), "--set", "sample.per_klass=3"]) == 2
    assert "sample.per_class" in capsys.readouterr().err
