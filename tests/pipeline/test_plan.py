"""The pipeline plan: the shipped configs load, every step waits for what it reads, and references
between steps are checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlt.config import ConfigError, load_config
from cxrlt.pipeline import load_pipeline, make_plan
from trainers.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["configs/demo.toml", "configs/mimic-cxr-lt-2024.toml", "configs/rehearsal.toml"]


def _sets(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]


def _override(argv: tuple[str, ...], key: str) -> str:
    [value] = [s.split("=", 1)[1] for s in _sets(argv) if s.startswith(key + "=")]
    return value


@pytest.mark.parametrize("config", CONFIGS)
def test_every_step_runs_after_the_steps_whose_outputs_it_reads(config: str) -> None:
    cfg = load_pipeline(ROOT / config)
    steps = make_plan(cfg)
    produced: dict[Path, str] = {}
    for step in steps:
        for path in step.done:
            produced[path] = step.name
    earlier: dict[str, set[str]] = {}
    for step in steps:
        # Everything a step reads that another step writes (a path among its arguments, or inside one of
        # its --set values) comes from a step it runs after, directly or through another.
        words = [w.split("=", 1)[-1] for w in step.argv]
        needs = {produced[Path(w)] for w in words if Path(w) in produced and produced[Path(w)] != step.name}
        ancestors = set(step.after).union(*(earlier[a] for a in step.after))
        assert needs <= ancestors, (step.name, needs - ancestors)
        earlier[step.name] = ancestors
    assert len({s.name for s in steps}) == len(steps)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_member_config_loads_as_a_training_config(config: str) -> None:
    cfg = load_pipeline(ROOT / config)
    trains = [s for s in make_plan(cfg) if s.argv[0] == "train"]
    assert [s.name for s in trains] == [f"train-{m.name}" for m in cfg.members if not m.synthetic] + [
        f"train-{m.name}" for m in cfg.members if m.synthetic
    ]
    for step, member in zip(
        trains, [m for m in cfg.members if not m.synthetic] + [m for m in cfg.members if m.synthetic]
    ):
        train = load_config(TrainConfig, ROOT / cfg.train.config, _sets(step.argv))
        assert train.resolutions == member.resolutions
        assert step.heavy and step.resume and step.argv[-2:] == ("--nproc", str(cfg.train.nproc))


def test_demo_plan_trains_three_architectures_at_two_sizes_and_a_synthetic_member() -> None:
    cfg = load_pipeline(ROOT / "configs/demo.toml")
    steps = {s.name: s for s in make_plan(cfg)}
    backbones = {_override(steps[f"train-{n}"].argv, "model.backbone.name") for n in ("convnext", "effnetv2", "vit")}
    assert backbones == {"convnext_atto", "tf_efficientnetv2_b0", "vit_tiny_patch16_224"}
    for name in ("convnext", "effnetv2", "vit"):
        assert _override(steps[f"train-{name}"].argv, "resolutions") == "[64, 96]"
        # the tuned loss: members start from the tune step's best trial
        assert (
            steps[f"train-{name}"].argv[1] == str(cfg.out_dir / "tune" / "best.toml")
            and "tune" in steps[f"train-{name}"].after
        )
    synth_member = steps["train-convnext-synth"]
    assert "synth-sample" in synth_member.after
    assert _override(synth_member.argv, "data.synthetic") == str(cfg.out_dir / "synth" / "synthetic")
    assert _override(steps["synth-sample"].argv, "filter.classifier").endswith("members/convnext/res-64/best.pt")
    predicted = [n for n in steps if n.startswith("predict-")]
    assert len(predicted) == 2 * 7 and all("--tta" in steps[n].argv for n in predicted)
    assert steps["report-t1"].done == (cfg.out_dir / "report" / "t1" / "index.html",)
    assert steps["submit-t1"].done == (cfg.out_dir / "submissions" / "t1.zip",)


def test_study_and_student_members_start_from_an_earlier_member() -> None:
    cfg = load_pipeline(ROOT / "configs/mimic-cxr-lt-2024.toml")
    steps = {s.name: s for s in make_plan(cfg)}
    study, student = steps["train-study-convnext-s"], steps["train-student-convnext-s"]
    teacher_file = str(cfg.out_dir / "members" / "convnext-s" / "res-1024" / "best.pt")
    assert _override(study.argv, "stage.init_from") == teacher_file and "train-convnext-s" in study.after
    assert _override(study.argv, "data.shards") == str(cfg.out_dir / "shards-study") and "shard-study" in study.after
    assert _override(student.argv, "student.teacher") == teacher_file and "train-convnext-s" in student.after
    assert "--level" in steps["shard-study"].argv


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pipeline.synth.filter_member=vit-128", "filter_member = 'vit-128'"),
        (
            'pipeline.members=[{name="a", resolutions=[64], init_from="b-64"}, {name="b", resolutions=[64]}]',
            "init_from = 'b-64' is not a run of an earlier member",
        ),
    ],
)
def test_a_reference_to_an_unknown_or_later_member_is_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_plan(load_pipeline(ROOT / "configs/demo.toml", [override]))


def test_a_synthetic_member_without_a_synth_step_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "configs/demo.toml").read_text()
    without_synth = text[: text.index("[pipeline.synth]")] + text[text.index("[pipeline.ensemble]") :]
    (tmp_path / "demo.toml").write_text(without_synth)
    with pytest.raises(ConfigError, match="synthetic = true but there is no"):
        load_pipeline(tmp_path / "demo.toml")


def test_the_rehearsal_runs_the_real_recipes_steps_with_only_sizes_and_paths_changed() -> None:
    real, rehearsal = (
        make_plan(load_pipeline(ROOT / c)) for c in ("configs/mimic-cxr-lt-2024.toml", "configs/rehearsal.toml")
    )

    def shape(steps: list) -> list[tuple[str, tuple[str, ...]]]:
        # Step names and dependencies carry the members' sizes (NAME-SIZE); compare them without sizes.
        strip = lambda name: "-".join(p for p in name.split("-") if not p.isdigit())  # noqa: E731
        return {(strip(s.name), tuple(sorted({strip(a) for a in s.after}))) for s in steps}

    # The one addition: the rehearsal has an answer key for Task 3, so it also scores that submission.
    assert shape(real) <= shape(rehearsal) and {n for n, _ in shape(rehearsal) - shape(real)} == {"report-t3"}
    commands = {s.name.split("-")[0] for s in rehearsal}
    assert {"shard", "tune", "train", "synth", "predict", "ensemble", "submit", "report"} <= commands


def test_every_task_has_its_submission_and_the_ensemble_gets_the_views() -> None:
    cfg = load_pipeline(ROOT / "configs/rehearsal.toml")
    steps = {s.name: s for s in make_plan(cfg)}
    for split in ("dev", "test"):
        apply = steps[f"ensemble-apply-{split}"].argv
        assert apply[apply.index("--views") + 1] == str(cfg.out_dir / "labels" / f"{split}.csv")
    assert {n for n in steps if n.startswith("submit-")} == {"submit-t1", "submit-t2", "submit-t3"}
    t3 = steps["submit-t3"].argv
    zero_shot = t3[t3.index("--predictions") + 1 : t3.index("--out")]
    # Three members answer Task 3: the text-query ML-Decoder and the contrastive (prompt) member from text,
    # the weak-label member from its trained rows.
    t3_dir = cfg.out_dir / "predictions" / "dev-t3"
    names = ("textquery-convnext-s-64", "clip-convnext-s-64", "weak-convnext-s-64")
    assert zero_shot == tuple(str(t3_dir / f"{name}.csv") for name in names)
    scored = steps["predict-textquery-convnext-s-64-dev-t3"].argv
    assert scored[scored.index("--classes") + 1] == "Bulla,Cardiomyopathy,Hilum,Osteopenia,Scoliosis"
    assert "model.head.text_queries=true" in _sets(steps["train-textquery-convnext-s"].argv)
    assert steps["submit-t2"].argv[steps["submit-t2"].argv.index("--predictions") + 1] == str(
        cfg.out_dir / "ensemble" / "dev.csv"
    )
    # Task 2 is scored on its gold subset, Task 3 on the rehearsal's answer key.
    assert "development_labeled_task2.csv" in steps["report-t2"].argv[steps["report-t2"].argv.index("--labels") + 1]
    assert steps["report-t3"].argv[steps["report-t3"].argv.index("--task") + 1] == "t3"


def test_the_noisy_student_reads_the_external_unlabelled_shards() -> None:
    cfg = load_pipeline(ROOT / "configs/mimic-cxr-lt-2024.toml")
    steps = {s.name: s for s in make_plan(cfg)}
    student = steps["train-student-convnext-s"]
    assert _override(student.argv, "student.unlabelled") == str(cfg.out_dir / "shards-unlabelled")
    assert "shard-unlabelled" in student.after and steps["shard-unlabelled"].argv[:2] == ("shard", "nih")
    # Like its siblings, the student starts from ImageNet weights.
    assert _override(student.argv, "model.backbone.checkpoint").endswith(".pth")


def test_extending_a_recipe_changes_entries_but_never_adds_members(tmp_path: Path) -> None:
    child = tmp_path / "child.toml"
    child.write_text(f'''extends = "{ROOT / "configs/demo.toml"}"
[pipeline]
out_dir = "elsewhere"
[[pipeline.members]]
name = "vit"
resolutions = [32]
set = ["data.batch_size=4"]
''')
    cfg = load_pipeline(child)
    vit = next(m for m in cfg.members if m.name == "vit")
    assert cfg.out_dir == Path("elsewhere") and [m.name for m in cfg.members] == [
        "convnext",
        "effnetv2",
        "vit",
        "convnext-synth",
    ]
    assert vit.resolutions == [32] and vit.set == ["model.backbone.name=vit_tiny_patch16_224", "data.batch_size=4"]
    child.write_text(child.read_text().replace('name = "vit"', 'name = "resnet"'))
    with pytest.raises(ConfigError, match=r"\['resnet'\] not in the extended file"):
        load_pipeline(child)
    child.write_text(f'extends = "{child.name}"\n')
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_pipeline(child)


def test_a_t3_submission_without_a_zero_shot_member_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a member with zero_shot = true"):
        load_pipeline(ROOT / "configs/demo.toml", ['pipeline.submissions=[{task="t3", split="dev"}]'])
