"""Config trees: strict TOML loading, dotted overrides, errors that name the key and the file,
and a written config that loads back to the same tree."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from cxrlt.config import ConfigError, config_hash, load_config, to_toml, write_config


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Train:
    data: Path
    resolutions: list[int] = field(default_factory=lambda: [64])
    optim: Optim = field(default_factory=Optim)
    class_weights: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    bf16: bool = False
    epochs: int = 1


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_toml_and_overrides_build_the_tree(tmp_path):
    path = write(tmp_path, 'data = "shards"\nepochs = 3\n[optim]\nlr = 3e-4\n')
    cfg = load_config(
        Train, path, ["optim.schedule=constant", "resolutions=[64, 128]", "class_weights.Edema=2", "bf16=true"]
    )
    assert cfg.data == Path("shards") and cfg.epochs == 3
    assert cfg.optim.lr == 3e-4 and cfg.optim.schedule == "constant" and cfg.optim.betas == (0.9, 0.999)
    assert cfg.resolutions == [64, 128] and cfg.class_weights == {"Edema": 2.0} and cfg.bf16 is True


def test_unquoted_string_override_is_a_string(tmp_path):
    cfg = load_config(Train, write(tmp_path, 'data = "a"\n'), ["data=/scratch/shards-1024"])
    assert cfg.data == Path("/scratch/shards-1024")


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, 'data = "a"\n[optim]\nlrr = 1\n')
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(Train, path)


def test_unknown_override_key_is_named_as_an_override(tmp_path):
    with pytest.raises(ConfigError, match=r"--set optim.momentum: unknown key 'optim.momentum'"):
        load_config(Train, write(tmp_path, 'data = "a"\n'), ["optim.momentum=0.9"])


def test_wrong_type_names_key_expected_type_and_origin(tmp_path):
    path = write(tmp_path, 'data = "a"\nepochs = "ten"\n')
    with pytest.raises(ConfigError, match=rf"{path}: key 'epochs' expects an integer, got str 'ten'"):
        load_config(Train, path)
    with pytest.raises(ConfigError, match=r"--set: key 'optim.lr' expects a number, got bool True"):
        load_config(Train, write(tmp_path, 'data = "a"\n'), ["optim.lr=true"])
    with pytest.raises(ConfigError, match=r"key 'optim.schedule' expects one of \['cosine', 'constant'\]"):
        load_config(Train, write(tmp_path, 'data = "a"\n'), ["optim.schedule=linear"])
    with pytest.raises(ConfigError, match=r"key 'resolutions\[1\]' expects an integer"):
        load_config(Train, write(tmp_path, 'data = "a"\nresolutions = [64, 1.5]\n'))


def test_missing_required_value_is_named(tmp_path):
    path = write(tmp_path, "epochs = 2\n")
    with pytest.raises(ConfigError, match=rf"{path}: missing required key 'data'"):
        load_config(Train, path)


def test_invalid_toml_and_missing_file_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="run.toml: invalid TOML"):
        load_config(Train, write(tmp_path, "data = \n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Train, tmp_path / "nope.toml")


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(Train, None, ["epochs"])


def test_written_config_loads_back_to_the_same_tree_and_hash(tmp_path):
    cfg = load_config(Train, write(tmp_path, 'data = "a"\n'), ["optim.lr=0.01", "class_weights.Mass=0.5"])
    out = write_config(cfg, tmp_path / "out" / "resolved.toml")
    again = load_config(Train, out)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert "checkpoint" not in to_toml(cfg)  # None has no TOML spelling; it falls back to the default
    assert config_hash(load_config(Train, out, ["epochs=2"])) != config_hash(cfg)
