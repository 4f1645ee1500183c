"""The recipe's weak-label member in the plan: the mining step, the member trained on its table, its Task 1
columns in the ensemble and its trained Task 3 rows in the Task 3 average (make_plan only, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlt.config import ConfigError, load_config
from cxrlt.labels import CXR_LT_2024_TASK1, CXR_LT_2024_TASK3
from cxrlt.pipeline import load_pipeline, make_plan
from trainers.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _sets(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]


def _value(argv: tuple[str, ...], option: str) -> str:
    return argv[argv.index(option) + 1]


@pytest.mark.parametrize(
    ("config", "reports", "size"),
    [
        ("configs/mimic-cxr-lt-2024.toml", "/data/mimic-cxr/2.0.0/files", 512),
        ("configs/rehearsal.toml", "runs/rehearsal-data/mimic-cxr/2.0.0/files", 64),
    ],
)
def test_the_weak_label_member_trains_on_the_mined_table_and_answers_task3(config: str, reports: str, size: int):
    cfg = load_pipeline(ROOT / config)
    steps = {s.name: s for s in make_plan(cfg)}
    table = cfg.out_dir / "weak-labels" / "train.csv"
    mine = steps["weak-labels"]
    assert mine.argv[:2] == ("zeroshot", "weak-labels") and mine.done == (table,) and mine.after == ("shard",)
    assert _value(mine.argv, "--shards") == str(cfg.out_dir / "shards") and _value(mine.argv, "--split") == "train"
    assert _value(mine.argv, "--reports") == reports
    assert _value(mine.argv, "--rules") == "configs/fewshot-mimic-task3.toml"
    assert (ROOT / "configs/fewshot-mimic-task3.toml").is_file() and _value(mine.argv, "--out") == str(table)

    train = steps["train-weak-convnext-s"]
    assert "weak-labels" in train.after and f"data.weak_labels={table}" in _sets(train.argv)
    member = load_config(TrainConfig, ROOT / cfg.train.config, _sets(train.argv))
    assert member.data.weak_labels == table and member.resolutions == [size]
    assert member.model.backbone.name == ("convnext_small" if size == 512 else "convnext_atto")

    # The ensemble's members share one class set: this member's files there hold the Task 1 columns.
    name = f"weak-convnext-s-{size}"
    for split in ("dev", "test"):
        predict = steps[f"predict-{name}-{split}"].argv
        assert _value(predict, "--classes") == ",".join(CXR_LT_2024_TASK1.classes)
        assert _value(predict, "--out") in steps["ensemble-build" if split == "dev" else "ensemble-apply-test"].argv
    # Task 3: its trained rows (no descriptions: a fixed head scores no text), averaged with the zero-shot members.
    t3 = steps[f"predict-{name}-dev-t3"].argv
    assert _value(t3, "--classes") == ",".join(CXR_LT_2024_TASK3.classes) and "--descriptions" not in t3
    submit = steps["submit-t3"]
    scored = submit.argv[submit.argv.index("--predictions") + 1 : submit.argv.index("--out")]
    assert str(cfg.out_dir / "predictions" / "dev-t3" / f"{name}.csv") in scored and len(scored) == 3
    assert f"predict-{name}-dev-t3" in submit.after
    textquery = steps[f"predict-textquery-convnext-s-{size}-dev-t3"].argv
    assert _value(textquery, "--descriptions") == "cxr-lt-2024-task3"


def test_a_weak_label_member_needs_the_mining_step() -> None:
    member = 'pipeline.members=[{name="w", resolutions=[64], weak_labels=true}]'
    with pytest.raises(ConfigError, match=r"weak_labels = true but there is no \[pipeline.weak_labels\]"):
        load_pipeline(ROOT / "configs/demo.toml", [member])


def test_a_weak_label_member_alone_answers_task3_and_reports_default_to_the_shards_text() -> None:
    cfg = load_pipeline(
        ROOT / "configs/demo.toml",
        [
            'pipeline.members=[{name="convnext", resolutions=[64]}, {name="w", resolutions=[64], weak_labels=true}]',
            'pipeline.weak_labels={rules="configs/fewshot-mimic-task3.toml", set=["negation_window=4"]}',
            'pipeline.submissions=[{task="t3", split="dev"}]',
        ],
    )
    steps = {s.name: s for s in make_plan(cfg)}
    mine = steps["weak-labels"].argv
    assert "--reports" not in mine and _sets(mine) == ["negation_window=4"]
    assert _value(steps["submit-t3"].argv, "--predictions") == str(cfg.out_dir / "predictions" / "dev-t3" / "w-64.csv")
