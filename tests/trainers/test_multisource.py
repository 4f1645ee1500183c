"""Multi-source training in `cxrlt train` (#18): `data.sources` / `data.schema` validated before any work,
and one real run on two shard sets of different schemas (NIH-14 primary + a CheXpert-14 set) whose
model carries the union classes, tracked with its sources in MLflow."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from cxrlt.config import ConfigError, load_config
from cxrlt.errors import InputError
from cxrlt.labels import CHEXPERT_14
from cxrlt.models.saved import load_model
from cxrlt.tracking import Tracker, sqlite_uri
from tests.cli import cxrlt
from tests.starter import shard_starter
from tests.trainers.conftest import CONFIG, train_args
from trainers.config import TrainConfig
from trainers.stages import check_inputs, training_hash

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def chexpert64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 starter images sharded under CheXpert-14 at 64 px (the second set of a union run)."""
    return shard_starter(tmp_path_factory.mktemp("chexpert64"), CHEXPERT_14, 64, 100, images=200)


def _sources(*tables: str) -> str:
    return f"data.sources=[{', '.join(tables)}]"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (_sources("{shards = 'x', ratio = 1.5}"), "data.sources[0]: ratio must be in (0, 1), got 1.5"),
        (_sources("{shards = 'x', ratio = nan}"), "data.sources[0]: ratio must be in (0, 1)"),
        (_sources("{shards = 'x'}"), "missing required key 'data.sources[0].ratio'"),
        (_sources("{shards = 'x', ratio = 0.5, weight = 1}"), "unknown key 'data.sources[0].weight'"),
        (_sources("{shards = 'x', ratio = 0.6}", "{shards = 'y', ratio = 0.4}"), "ratios sum to 0.6 + 0.4 >= 1"),
        ("data.schema=nih", "data: schema must be '', 'union' or a registered schema"),
    ],
)
def test_bad_sources_and_schema_are_refused_when_the_config_loads(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, CONFIG, [override])
    assert message in str(info.value)


def _config(shards: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, CONFIG, [f"data.shards={shards}", *overrides])


def test_check_inputs_names_the_source_at_fault(starter64, chexpert64, tmp_path):
    both = (_sources(f"{{shards = '{chexpert64}', ratio = 0.3}}"), "data.schema=union")
    check_inputs(_config(starter64, *both))
    with pytest.raises(InputError, match=r"data.sources\[0\].shards = .*no shard set there"):
        check_inputs(_config(starter64, _sources(f"{{shards = '{tmp_path}', ratio = 0.3}}")))
    with pytest.raises(InputError, match=r"data.sources\[0\].split = 'dev2'"):
        check_inputs(_config(starter64, _sources(f"{{shards = '{chexpert64}', ratio = 0.3, split = 'dev2'}}")))
    with pytest.raises(InputError, match="none of the classes of 'nih-14'"):
        check_inputs(_config(starter64, "data.schema=cxr-lt-2024-task3"))
    # Classes of the run's schema, not the primary's: Support Devices is only CheXpert's.
    check_inputs(_config(starter64, *both, "data.unknown_classes=['Support Devices']"))
    with pytest.raises(InputError, match=r"data.unknown_classes: \['Support Devices'\]"):
        check_inputs(_config(starter64, "data.unknown_classes=['Support Devices']"))
    with pytest.raises(InputError, match="the student stage reads data.shards alone"):
        check_inputs(_config(starter64, "stage.name=student", "data.schema=union"))


def test_a_union_run_on_two_schemas_trains_the_union_classes(starter64, chexpert64, tmp_path):
    out = tmp_path / "union"
    sources = _sources(f"{{shards = '{chexpert64}', ratio = 0.4}}")
    sets = ("schedule.epochs=1", "data.steps_per_epoch=4", "run.log_every=1", sources, "data.schema=union")
    result = cxrlt(*train_args(starter64, out, *sets), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    model = load_model(out / "best.pt")
    assert model.schema == "union" and len(model.classes) == 21
    assert model.classes[2] == "Pleural Effusion" and model.classes[-1] == "Support Devices"
    dev = json.loads((out / "result.json").read_text())["dev_metrics"]
    assert math.isfinite(dev["loss"]) and math.isfinite(dev["mAP"])
    saved = load_config(TrainConfig, out / "config.toml")
    assert [(s.shards, s.ratio, s.split) for s in saved.data.sources] == [(chexpert64, 0.4, "train")]

    run = Tracker(sqlite_uri(tmp_path)).client.get_run((out / "mlflow_run_id").read_text().strip())
    assert str(chexpert64) in run.data.params["data.sources"] and run.data.params["data.schema"] == "union"
    assert f"{chexpert64} (ratio 0.4, split train, index sha256 " in run.data.tags["sources"]
    losses = [m.value for m in Tracker(sqlite_uri(tmp_path)).client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_a_config_without_sources_hashes_as_before_multi_source_training_existed():
    # 0cc8b04ce0a9: configs/train-starter-tiny.toml's training hash before data.sources / data.schema (38267e9),
    # so finished members and checkpoints of earlier runs still resume after the upgrade.
    cfg = load_config(TrainConfig, Path(__file__).resolve().parents[2] / "configs" / "train-starter-tiny.toml")
    assert training_hash(cfg) == "0cc8b04ce0a9"
    assert training_hash(replace(cfg, data=replace(cfg.data, schema="union"))) != "0cc8b04ce0a9"
