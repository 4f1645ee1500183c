"""The tune config, search space and Ray pieces, checked without starting Ray: bad input names its key."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ray.tune.search import BasicVariantGenerator

from cxrlt.config import ConfigError
from cxrlt.errors import InputError
from tests.tune.conftest import BASE, REPO, TEST_STUDY
from trainers.tune_config import absolute_paths, load_tune_config
from trainers.tune_space import ResumableASHA, param_space, scheduler, search_algorithm
from trainers.tune_trial import member_dir, torchrun_trial_command

SHIPPED = REPO / "configs" / "tune-starter.toml"


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tune.toml"
    path.write_text(f'base = "{BASE}"\n{body}')
    return path


GAMMA = '[space."loss.gamma_neg"]\ntype = "uniform"\nlow = 1.0\nhigh = 5.0\n'


def test_the_shipped_config_loads_and_layers_train_tables_and_overrides():
    loaded = load_tune_config(SHIPPED, ["base=" + str(BASE), "tune.num_samples=3", "train.data.batch_size=4"])
    assert loaded.tune.tune.num_samples == 3 and loaded.tune.tune.direction == "max"
    cfg = loaded.trial_config({"loss.gamma_neg": 2.5, "optim.lr": 1e-3})
    assert (cfg.loss.gamma_neg, cfg.optim.lr, cfg.data.batch_size, cfg.schedule.epochs) == (2.5, 1e-3, 4, 3)
    assert cfg.model.backbone.name == "convnext_atto"  # from the base file
    space = param_space(loaded.tune.space, "random")
    assert set(space) == {"loss.gamma_neg", "loss.gamma_pos", "loss.clip", "loss.class_weight_power", "optim.lr"}


def test_the_grid_searcher_makes_choices_grid_axes():
    loaded = load_tune_config(TEST_STUDY, ["base=" + str(BASE)])
    space = param_space(loaded.tune.space, "grid")
    assert space["optim.lr"] == {"grid_search": [1e-2, 1e-2, 1e-9, 1e-9]}
    assert loaded.tune.tune.direction == "min"  # metric "loss"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[space."loss.gamma_nag"]\ntype = "uniform"\nlow = 1.0\nhigh = 2.0\n', "loss.gamma_nag"),
        ('[space."loss.clip"]\ntype = "uniform"\nlow = 0.0\nhigh = 1.5\n', "space.'loss.clip': value 1.5"),
        ('[space."optim.lr"]\ntype = "choice"\nvalues = ["fast"]\n', "space.'optim.lr'"),
        ('[space."optim.lr"]\ntype = "loguniform"\nlow = 0.0\nhigh = 1.0\n', "low > 0"),
        ('[space."optim.lr"]\ntype = "uniform"\nlow = 2.0\nhigh = 1.0\n', "low < high"),
        ("", "nothing to search"),
        (f'[tune]\nsearcher = "grid"\n{GAMMA}', "['loss.gamma_neg'] are not"),
        (f'[tune]\nmetric = "accuracy"\n{GAMMA}', "metric must be one of"),
        (f"[train.optim]\nlrr = 1.0\n{GAMMA}", "optim.lrr"),
    ],
)
def test_bad_input_names_the_key(tmp_path, body, message):
    with pytest.raises(ConfigError) as error:
        load_tune_config(_write(tmp_path, body))
    assert message in str(error.value)


def test_a_missing_base_and_a_bad_train_override_name_their_key(tmp_path):
    path = tmp_path / "tune.toml"
    path.write_text(f'base = "{tmp_path / "nope.toml"}"\n{GAMMA}')
    with pytest.raises(ConfigError, match="base = .*no such training config"):
        load_tune_config(path)
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_tune_config(_write(tmp_path, GAMMA), ["train.optim.lrr=1"])


def test_tpe_needs_optuna_or_builds_optunas_searcher():
    loaded = load_tune_config(SHIPPED, ["base=" + str(BASE), "tune.searcher=tpe"])
    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ConfigError, match=r"needs optuna: install the tune extra"):
            search_algorithm(loaded.tune.tune)
    else:
        from ray.tune.search.optuna import OptunaSearch

        assert isinstance(search_algorithm(loaded.tune.tune), OptunaSearch)
    assert isinstance(
        search_algorithm(load_tune_config(SHIPPED, ["base=" + str(BASE)]).tune.tune), BasicVariantGenerator
    )


def test_asha_rungs_come_from_config_and_survive_a_new_scheduler(tmp_path):
    settings = load_tune_config(SHIPPED, ["base=" + str(BASE), "tune.grace_period=1", "tune.max_t=4"]).tune.tune
    first = scheduler(settings, epochs=3, state_file=tmp_path / "asha.pkl")
    assert isinstance(first, ResumableASHA) and [m for m, _ in first._brackets[0]._rungs] == [4, 2, 1]
    first._brackets[0]._rungs[-1][1]["trial_a"] = 0.5
    first._persist()
    second = scheduler(settings, epochs=3, state_file=tmp_path / "asha.pkl")
    second._load_once()
    assert second._brackets[0]._rungs[-1][1] == {"trial_a": 0.5}
    with pytest.raises(ConfigError, match="grace_period = 5 exceeds max_t = 3"):
        scheduler(load_tune_config(SHIPPED, ["base=" + str(BASE), "tune.grace_period=5"]).tune.tune, 3, tmp_path / "x")


def test_a_trial_is_one_member_in_an_absolute_folder_and_multi_rank_trials_use_torchrun(tmp_path):
    loaded = load_tune_config(SHIPPED, ["base=" + str(BASE)])
    cfg = absolute_paths(loaded.trial_config({}), tmp_path)
    assert (
        cfg.data.shards == tmp_path / "shards" / "starter-64" and member_dir(cfg) == tmp_path / "runs" / "starter-tiny"
    )
    source = 'train.data.sources=[{shards = "shards/vindr", ratio = 0.3}]'
    mixed = load_tune_config(SHIPPED, ["base=" + str(BASE), source])
    assert absolute_paths(mixed.trial_config({}), tmp_path).data.sources[0].shards == tmp_path / "shards" / "vindr"
    assert member_dir(loaded.trial_config({"resolutions": [32]})).name == "res-32"
    with pytest.raises(InputError, match="one member"):
        member_dir(loaded.trial_config({"resolutions": [32, 64]}))
    command = torchrun_trial_command(tmp_path / "trial.toml", 2)
    assert "--nproc-per-node=2" in command and command[-3:] == [
        "trainers.worker",
        str(tmp_path / "trial.toml"),
        "--resume",
    ]
