"""The pretraining chain in the recipe's plan: public sets sharded in their own schemas, one member
pretraining on all of them at once (union of classes, ratios), a MIMIC member starting from it, and the
pretraining member kept out of predictions, the ensemble and the submissions."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlt.config import ConfigError, load_config
from cxrlt.pipeline import load_pipeline, make_plan
from trainers.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _sets(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]


@pytest.mark.parametrize("recipe", ["mimic-cxr-lt-2024.toml", "rehearsal.toml"])
def test_the_recipe_pretrains_on_the_public_sets_then_starts_a_member_from_it(recipe: str) -> None:
    cfg = load_pipeline(ROOT / "configs" / recipe)
    steps = {s.name: s for s in make_plan(cfg)}
    public = cfg.out_dir / "shards-public"
    for name, source in (("nih", "nih"), ("chexpert", "chexpert"), ("vindr", "vindr-cxr")):
        argv = steps[f"shard-public-{name}"].argv
        assert argv[:2] == ("shard", source) and argv[argv.index("--out") + 1] == str(public / name)
    pretrain = steps["train-public-effnetv2-l"]
    sets = _sets(pretrain.argv)
    assert f"data.shards={public / 'nih'}" in sets and "data.schema=union" in sets
    assert {"shard-public-nih", "shard-public-chexpert", "shard-public-vindr"} <= set(pretrain.after)
    # The override is the TOML the trainer reads: the sources and their shares come back as given.
    [sources] = [s for s in sets if s.startswith("data.sources=")]
    cfg_train = load_config(TrainConfig, ROOT / "configs" / "mimic-cxr-lt-2024-member.toml", [sources])
    assert [(s.shards, s.ratio) for s in cfg_train.data.sources] == [
        (public / "chexpert", 0.45),
        (public / "vindr", 0.15),
    ]
    size = cfg.members[[m.name for m in cfg.members].index("public-effnetv2-l")].resolutions[0]
    chained = steps["train-effnetv2-l"]
    started = cfg.out_dir / "members" / "public-effnetv2-l" / f"res-{size}" / "best.pt"
    assert f"stage.init_from={started}" in _sets(chained.argv) and "train-public-effnetv2-l" in chained.after
    assert not any(name.startswith("predict-public-") for name in steps)
    built = steps["ensemble-build"].argv
    assert not any("public-effnetv2-l" in word for word in built)
    assert any(word.endswith(f"effnetv2-l-{size}.csv") for word in built)


def _recipe(tmp_path: Path, members: str, public: str = "") -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(
        f"""[pipeline]
out_dir = "{tmp_path / "out"}"
[pipeline.train]
config = "{ROOT / "configs" / "train-starter-tiny.toml"}"
{public}
{members}"""
    )
    return path


PUBLIC = """
[[pipeline.public]]
name = "nih"
source = "nih"
[[pipeline.public]]
name = "vindr"
source = "vindr-cxr"
"""
PLAIN = """
[[pipeline.members]]
name = "plain"
resolutions = [32]
"""


@pytest.mark.parametrize(
    ("member", "public", "message"),
    [
        ('public = ["nih", "padchest"]', PUBLIC, r"public = \['nih', 'padchest'\], but \[\[pipeline.public\]\] has"),
        ('public = ["nih", "vindr"]\npublic_ratios = [0.3, 0.2]', PUBLIC, "public_ratios gives the shares"),
        ('public = ["nih", "vindr"]\nzero_shot = true', PUBLIC, "a public \\(pretraining\\) member is a plain"),
        ('public = ["nih"]', PUBLIC.replace('name = "vindr"', 'name = "nih"'), "names must be unique"),
    ],
)
def test_a_bad_pretraining_member_is_refused_naming_it(tmp_path: Path, member: str, public: str, message: str) -> None:
    members = f'{PLAIN}\n[[pipeline.members]]\nname = "pre"\nresolutions = [32]\n{member}\n'
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_recipe(tmp_path, members, public))


def test_a_recipe_of_pretraining_members_only_is_refused(tmp_path: Path) -> None:
    members = '[[pipeline.members]]\nname = "pre"\nresolutions = [32]\npublic = ["nih"]\n'
    with pytest.raises(ConfigError, match="none is left to ensemble"):
        load_pipeline(_recipe(tmp_path, members, PUBLIC))
