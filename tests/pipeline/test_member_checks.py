"""`cxrlt pipeline` (dry run or not) and `cxrlt slurm pipeline` load every member's training config before any
step runs or any job is queued."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cxrlt.config import ConfigError, load_config
from cxrlt.pipeline import check_train_steps, load_pipeline, make_plan
from tests.cli import cxrlt
from trainers.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _load(path, overrides):
    return load_config(TrainConfig, path, overrides)


def _extending(tmp_path, member: str, setting: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(
        f'extends = "{ROOT / "configs" / "demo.toml"}"\n\n[pipeline]\nout_dir = "{tmp_path / "out"}"\n\n'
        f'[[pipeline.members]]\nname = "{member}"\nset = ["{setting}"]\n'
    )
    return path


def test_the_shipped_plans_pass(monkeypatch):
    monkeypatch.chdir(ROOT)
    for config in ("configs/demo.toml", "configs/mimic-cxr-lt-2024.toml", "configs/rehearsal.toml"):
        cfg = load_pipeline(ROOT / config)
        check_train_steps(cfg, make_plan(cfg), _load)  # tune/best.toml does not exist: the base config stands in


@pytest.mark.parametrize(
    ("setting", "key"),
    [("model.backbone.name=resnet9000", "resnet9000"), ("resolutions=[64, 100]", "resolutions [100]")],
)
def test_a_bad_member_is_refused_naming_it_and_the_key(tmp_path, monkeypatch, setting, key):
    monkeypatch.chdir(ROOT)
    cfg = load_pipeline(_extending(tmp_path, "vit", setting))
    with pytest.raises(ConfigError, match=r"pipeline member 'vit' \(train-vit.*" + re.escape(key)):
        check_train_steps(cfg, make_plan(cfg), _load)


@pytest.mark.parametrize("command", [("pipeline",), ("slurm", "pipeline")])
def test_dry_run_refuses_an_unknown_backbone_before_anything(tmp_path, command):
    config = _extending(tmp_path, "effnetv2", "model.backbone.name=resnet9000")
    result = cxrlt(*command, config, "--dry-run", cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "'effnetv2'" in result.stderr + result.stdout and "resnet9000" in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()
