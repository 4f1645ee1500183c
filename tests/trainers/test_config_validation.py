"""Issue #16: bad values are refused when the config loads, naming the key, before anything is created."""

from __future__ import annotations

import pytest

from cxrlt.config import ConfigError, load_config
from trainers.config import TrainConfig


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=0", "batch_size"),
        ("data.eval_batch_size=0", "eval_batch_size"),
        ("data.steps_per_epoch=-3", "steps_per_epoch"),
        ("data.num_workers=-1", "num_workers"),
        ("data.synthetic_ratio=1.5", "synthetic_ratio"),
        ("data.synthetic_ratio=nan", "synthetic_ratio"),
        ("data.repeat_threshold=0.0", "repeat_threshold"),
        ("data.max_bad_fraction=nan", "max_bad_fraction"),
        ("optim.lr=nan", "lr"),
        ("optim.lr=inf", "lr"),
        ("optim.weight_decay=nan", "weight_decay"),
        ("optim.grad_clip=nan", "grad_clip"),
        ("optim.betas=[0.9, 1.5]", "betas"),
        ("optim.min_lr_ratio=nan", "min_lr_ratio"),
        ("schedule.min_delta=nan", "min_delta"),
        ("student.hard_threshold=2.0", "hard_threshold"),
        ('run.out_dir=""', "out_dir"),
        ("run.log_every=0", "log_every"),
    ],
)
def test_bad_train_values_name_the_key(override: str, key: str) -> None:
    table = override.split(".", maxsplit=1)[0]
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, overrides=[override])
    message = str(info.value)
    assert f"{table}:" in message and key in message


def test_good_train_values_still_load() -> None:
    cfg = load_config(
        TrainConfig,
        overrides=[
            "data.batch_size=1",
            "data.steps_per_epoch=2",
            "optim.lr=1e-3",
            "run.out_dir=runs/x",
            "data.repeat_threshold=0.5",
            "data.synthetic_ratio=0.2",
        ],
    )
    assert cfg.data.batch_size == 1 and cfg.data.steps_per_epoch == 2


@pytest.mark.parametrize("override", ["data.batch_size=0", "optim.lr=nan", "data.steps_per_epoch=-1"])
def test_cxrlt_train_refuses_before_creating_the_run_folder_or_mlflow_store(tmp_path, override, capfd):
    from pathlib import Path

    from tests.cli import cxrlt_in_process

    config = Path(__file__).resolve().parents[2] / "configs" / "demo-member.toml"
    out = tmp_path / "run"
    result = cxrlt_in_process(capfd, "train", config, "--set", f"run.out_dir={out}", "--set", override, cwd=tmp_path)
    key = override.split("=")[0].split(".")[1]
    assert result.returncode == 2 and key in result.stderr, result.stderr[-2000:]
    assert not out.exists() and not (tmp_path / "mlruns.db").exists()
