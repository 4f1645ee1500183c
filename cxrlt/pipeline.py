"""The end-to-end pipeline as a plan of `cxrlt` commands: its config tree and the plan it renders.

A pipeline config (`configs/demo.toml`, `configs/mimic-cxr-lt-2024.toml`) names the steps' own configs
and the overrides that tie them together; `make_plan` turns it into an ordered list of `Step`s, each one
`cxrlt` command line with the files that prove it finished and the steps it needs first. The same plan
is run step by step on this machine (`cxrlt pipeline`, launch/pipeline.py) or rendered as SLURM jobs
with afterok dependencies (`cxrlt slurm pipeline`), so both run exactly the same commands.

Folder layout under `out_dir`: shards/ (+ shards-study/, shards-unlabelled/, shards-public/NAME/), labels/SPLIT.csv,
weak-labels/train.csv (report-mined labels of the Task 3 classes), tune/,
members/NAME/res-SIZE/, synth/, predictions/SPLIT/NAME-SIZE.csv (+ predictions/SPLIT-t3/ for the zero-shot
classes), ensemble/ (recipe.json, SPLIT.csv), submissions/TASK.zip, report/TASK/ (one comparison per
submission that has labels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxrlt.config import OVERRIDE_ORIGIN, ConfigError, apply_overrides, from_dict, read_toml
from cxrlt.errors import InputError
from cxrlt.labels import TASK_SCHEMAS


@dataclass
class ShardStep:
    """`cxrlt shard SOURCE --out OUT/shards ARGS...`; args: the source's own options (images, tables,
    --max-size, --split, --schema, ...). study: also shard study-level samples (all views of a study,
    indication, vitals) into OUT/shards-study, for members with level = "study"."""

    source: str = "starter"
    args: list[str] = field(default_factory=list)
    study: bool = False


@dataclass
class UnlabelledStep:
    """`cxrlt shard SOURCE --out OUT/shards-unlabelled ARGS...`: an external image set (NIH, CheXpert,
    VinDr, ...) sharded in the run's schema, whose classes it does not annotate stay unknown; members
    with unlabelled = true (noisy students) mix it into training and let their teacher label it. Its
    args must put every image into the train split (e.g. --split 1,0,0) and name the run's --schema."""

    source: str
    args: list[str] = field(default_factory=list)


@dataclass
class PublicSet:
    """`cxrlt shard SOURCE --out OUT/shards-public/NAME ARGS...`: a public labelled dataset (NIH, CheXpert,
    VinDr-CXR, BRAX, PadChest) sharded in its own schema, for members that pretrain on public data
    (Member.public). A set that a member names first validates that member: its args must give it a dev
    split (e.g. --split 0.9,0.1,0)."""

    name: str
    source: str
    args: list[str] = field(default_factory=list)


@dataclass
class Submission:
    """One CodaLab submission: `task` (t1: 40 classes, t2: 26, t3: the 5 zero-shot classes) for images
    of the shard split `split`. ids: the challenge's id CSV (dicom_id), default the split's label CSV
    (OUT/labels/SPLIT.csv, every image of the split). labels: a CSV with the task's classes that scores the
    submission in report/TASK/ (default: the split's label CSV when `ids` is not given, else none).
    t1/t2 take the ensemble applied to the split; t3 the mean of the Task 3 members' scores (zero-shot
    members from text, weak-label members from their trained rows)."""

    task: Literal["t1", "t2", "t3"]
    split: str = "test"
    ids: Path | None = None
    labels: Path | None = None


@dataclass
class WeakLabelsStep:
    """`cxrlt zeroshot weak-labels`: every image of the train split labelled for the rules' classes (the
    Task 3 findings in configs/fewshot-mimic-task3.toml) from its study's report, into
    OUT/weak-labels/train.csv, which members with weak_labels = true train on. reports: the MIMIC-CXR
    report tree (files/pNN/pSUBJECT/sSTUDY.txt); None reads the report text the shards carry (sharded
    with --reports). set: overrides of the mining config."""

    rules: Path
    reports: Path | None = None
    set: list[str] = field(default_factory=list)


@dataclass
class TuneStep:
    """`cxrlt tune CONFIG`: its best trial's config (tune/best.toml) becomes every member's base config."""

    config: Path
    set: list[str] = field(default_factory=list)


@dataclass
class Member:
    """One architecture, trained at each of `resolutions` (one ensemble member per size).
    synthetic: mix the synth step's shards into its training batches (needs [pipeline.synth]).
    level: "study" reads the study-level shards (needs [pipeline.shard] study = true).
    init_from / teacher: an earlier member's model (NAME-SIZE) that initialises this one's backbone
    (stage.init_from: the study stage) or labels its unknowns (student.teacher: the noisy student);
    this member then trains after that one. unlabelled: mix [pipeline.unlabelled]'s shards into its
    training (student.unlabelled). zero_shot: a text-query ML-Decoder member (model.head.text_queries)
    that also scores the Task 3 classes from their names and descriptions.
    public: pretrain on these [[pipeline.public]] sets instead of the task's shards, the first set
    validating (its dev split) and each other one drawn at its `public_ratios` share of the training
    samples (default: an equal share for every set), on the union of their classes (data.sources,
    data.schema = "union"). Such a member is the first link of the pretraining chain: it is neither
    predicted nor ensembled, and later members start from it with init_from = NAME-SIZE (across schemas:
    the backbone, plus the head rows of shared classes with stage.init_head = "shared"). weak_labels: trains the
    classes of [pipeline.weak_labels]' table after the shards' (data.weak_labels, weighted by the loss's
    class weights like any class) and answers Task 3 with those trained rows; it joins the ensemble with
    the Task 1 classes (the recipe's shard schema), since every ensemble member has one class set."""

    name: str
    resolutions: list[int]
    set: list[str] = field(default_factory=list)
    synthetic: bool = False
    level: Literal["image", "study"] = "image"
    init_from: str = ""
    teacher: str = ""
    unlabelled: bool = False
    zero_shot: bool = False
    weak_labels: bool = False
    public: list[str] = field(default_factory=list)
    public_ratios: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.resolutions:
            raise ValueError(f"member {self.name!r}: resolutions must list at least one size")
        if self.public_ratios and len(self.public_ratios) != len(self.public) - 1:
            raise ValueError(
                f"member {self.name!r}: public_ratios gives the shares of the sets after the first "
                f"({len(self.public) - 1} for public = {self.public}), got {self.public_ratios}"
            )
        roles = ("synthetic", "unlabelled", "zero_shot", "weak_labels", "teacher")
        if self.public and (self.level != "image" or any(getattr(self, r) for r in roles)):
            raise ValueError(
                f"member {self.name!r}: a public (pretraining) member is a plain image member; "
                f"it takes none of level = 'study', {', '.join(roles)}"
            )


@dataclass
class TrainStep:
    """config: the members' base training config (replaced by the tuned best.toml when a tune step
    runs); set: overrides for every member; nproc: ranks per training run."""

    config: Path
    set: list[str] = field(default_factory=list)
    nproc: int = 1
    checkpoint: str = "best.pt"


@dataclass
class SynthStep:
    """`cxrlt synth train` then `sample`, filtered by `filter_member`'s model (NAME-SIZE), then `report`;
    synthetic_ratio: the share of synthetic samples in a synthetic member's batches."""

    config: Path
    filter_member: str
    set: list[str] = field(default_factory=list)
    synthetic_ratio: float = 0.2


@dataclass
class EnsembleStep:
    config: Path | None = None
    set: list[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    out_dir: Path
    members: list[Member]
    train: TrainStep
    name: str = ""  # the MLflow parent run's name (default: out_dir's name)
    experiment: str = "cxrlt-pipeline"
    tracking_uri: str = ""  # default: sqlite:///OUT/mlruns.db
    dev_split: str = "dev"
    test_split: str = "test"
    submissions: list[Submission] = field(default_factory=lambda: [Submission("t1")])
    tta: str = "hflip"
    shard: ShardStep = field(default_factory=ShardStep)
    unlabelled: UnlabelledStep | None = None
    public: list[PublicSet] = field(default_factory=list)
    weak_labels: WeakLabelsStep | None = None
    tune: TuneStep | None = None
    synth: SynthStep | None = None
    ensemble: EnsembleStep = field(default_factory=EnsembleStep)

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if not names:
            raise ValueError("members must list at least one member")
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if any(m.synthetic for m in self.members) and self.synth is None:
            raise ValueError("a member has synthetic = true but there is no [pipeline.synth] step")
        if any(m.level == "study" for m in self.members) and not self.shard.study:
            raise ValueError("a member has level = 'study' but [pipeline.shard] study is false")
        if any(m.unlabelled for m in self.members) and self.unlabelled is None:
            raise ValueError("a member has unlabelled = true but there is no [pipeline.unlabelled] step")
        sets = [p.name for p in self.public]
        if len(set(sets)) != len(sets):
            raise ValueError(f"[[pipeline.public]] names must be unique, got {sets}")
        for m in self.members:
            if any(name not in sets for name in m.public):
                raise ValueError(f"member {m.name!r}: public = {m.public}, but [[pipeline.public]] has {sets}")
        if all(m.public for m in self.members):
            raise ValueError("every member pretrains on public sets (public = [...]): none is left to ensemble")
        if any(m.weak_labels for m in self.members) and self.weak_labels is None:
            raise ValueError("a member has weak_labels = true but there is no [pipeline.weak_labels] step")
        tasks = [s.task for s in self.submissions]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"submissions: one per task, got {tasks}")
        if "t3" in tasks and not any(m.zero_shot or m.weak_labels for m in self.members):
            raise ValueError(
                "a t3 submission needs a member with zero_shot = true (a text-query member) or weak_labels = true"
            )


@dataclass
class PipelineDocument:
    """The `[pipeline]` table of a pipeline TOML (a `[slurm]` table beside it belongs to `cxrlt slurm`)."""

    pipeline: PipelineConfig


def load_pipeline(path: Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The [pipeline] table of `path` (a [slurm] table beside it is `cxrlt slurm`'s) with overrides."""
    data = read_toml(path)
    data.pop("slurm", None)
    overridden = apply_overrides(PipelineDocument, data, overrides)
    document = from_dict(PipelineDocument, data, origin=lambda key: OVERRIDE_ORIGIN if key in overridden else str(path))
    return document.pipeline


@dataclass(frozen=True)
class Step:
    """One `cxrlt` command. done: files that exist only once it has finished (every command writes its
    outputs atomically); after: steps that must finish first; heavy: trains or runs Ray (its own process,
    a GPU job on a cluster); resume: the command continues its own partial work with --resume."""

    name: str
    argv: tuple[str, ...]
    done: tuple[Path, ...]
    after: tuple[str, ...] = ()
    heavy: bool = False
    resume: bool = False
    ranks: int = 1


def _sets(overrides: Sequence[str]) -> list[str]:
    return [w for o in overrides for w in ("--set", o)]


class _Plan:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def add(
        self,
        name: str,
        argv: Sequence[object],
        done: Sequence[Path],
        after: Sequence[str] = (),
        heavy: bool = False,
        resume: bool = False,
        ranks: int = 1,
    ) -> str:
        known = {s.name for s in self.steps}
        missing = [a for a in after if a not in known]
        assert not missing, f"step {name} after unknown steps {missing}"  # a bug in make_plan, not input
        self.steps.append(Step(name, tuple(map(str, argv)), tuple(done), tuple(after), heavy, resume, ranks))
        return name


def member_runs(cfg: PipelineConfig) -> list[tuple[str, Member, int]]:
    """(NAME-SIZE, member, size) for every trained model, in config order."""
    return [(f"{m.name}-{size}", m, size) for m in cfg.members for size in m.resolutions]


def scored_runs(cfg: PipelineConfig) -> list[tuple[str, Member, int]]:
    """The trained models that predict the task's splits and join the ensemble (all but pretraining ones)."""
    return [run for run in member_runs(cfg) if not run[1].public]


def _ratios_toml(sources: Sequence[tuple[Path, float]]) -> str:
    """data.sources as the TOML array of tables a --set override takes."""
    return "[" + ", ".join(f'{{shards = "{path}", ratio = {ratio!r}}}' for path, ratio in sources) + "]"


def model_file(cfg: PipelineConfig, member: Member, size: int) -> Path:
    return cfg.out_dir / "members" / member.name / f"res-{size}" / cfg.train.checkpoint


def make_plan(cfg: PipelineConfig) -> list[Step]:
    """The pipeline's steps in an order that respects every `after` (paths as given: make them
    absolute first when the steps run elsewhere)."""
    out = cfg.out_dir
    plan = _Plan()
    shards = out / "shards"
    shard = plan.add("shard", ["shard", cfg.shard.source, "--out", shards, *cfg.shard.args], [shards / "_index.json"])
    shard_sets = {"image": (shards, shard)}
    if cfg.shard.study:
        study = out / "shards-study"
        argv = ["shard", cfg.shard.source, "--out", study, *cfg.shard.args, "--level", "study"]
        shard_sets["study"] = (study, plan.add("shard-study", argv, [study / "_index.json"]))
    unlabelled = out / "shards-unlabelled"
    if cfg.unlabelled is not None:
        u = cfg.unlabelled
        plan.add("shard-unlabelled", ["shard", u.source, "--out", unlabelled, *u.args], [unlabelled / "_index.json"])
    public = {p.name: out / "shards-public" / p.name for p in cfg.public}
    for p in cfg.public:
        argv = ["shard", p.source, "--out", public[p.name], *p.args]
        plan.add(f"shard-public-{p.name}", argv, [public[p.name] / "_index.json"])
    weak_table = out / "weak-labels" / "train.csv"
    if cfg.weak_labels is not None:
        w = cfg.weak_labels
        reports = ["--reports", w.reports] if w.reports is not None else []
        argv = ["zeroshot", "weak-labels", "--shards", shards, "--split", "train", *reports, "--rules", w.rules]
        plan.add("weak-labels", [*argv, *_sets(w.set), "--out", weak_table], [weak_table], [shard])
    splits = list(dict.fromkeys([cfg.dev_split, cfg.test_split, *(s.split for s in cfg.submissions)]))
    labels = {split: out / "labels" / f"{split}.csv" for split in splits}
    for split, path in labels.items():
        plan.add(f"labels-{split}", ["labels", shards, "--split", split, "--out", path], [path], [shard])

    base, base_after = cfg.train.config, [shard]
    if cfg.tune is not None:
        tune_dir = out / "tune"
        tune_sets = [f"run.out_dir={tune_dir}", f"train.data.shards={shards}", *cfg.tune.set]
        base = tune_dir / "best.toml"
        base_after = [
            plan.add("tune", ["tune", cfg.tune.config, *_sets(tune_sets)], [base], [shard], heavy=True, resume=True)
        ]

    runs = {name: (m, size) for name, m, size in member_runs(cfg)}
    trained: dict[str, str] = {}

    def source(member: Member, field_name: str) -> tuple[list[str], list[str]]:
        """The override and the dependency that an init_from / teacher reference adds."""
        run = getattr(member, field_name)
        if not run:
            return [], []
        if run not in runs or runs[run][0].name not in trained:
            raise ConfigError(
                f"member {member.name!r}: {field_name} = {run!r} is not a run of an earlier member "
                f"(runs are NAME-SIZE: {', '.join(runs)})"
            )
        key = "stage.init_from" if field_name == "init_from" else "student.teacher"
        return [f"{key}={model_file(cfg, *runs[run])}"], [trained[runs[run][0].name]]

    def train(member: Member, extra: Sequence[str], after: Sequence[str]) -> str:
        run_dir = out / "members" / member.name
        member_shards, sharded = shard_sets[member.level]
        if member.public:
            # The pretraining link of the chain: the public sets, mixed, on the union of their classes.
            first, *others = member.public
            ratios = member.public_ratios or [1 / len(member.public)] * len(others)
            member_shards, sharded = public[first], f"shard-public-{first}"
            mixed = [(public[name], ratio) for name, ratio in zip(others, ratios, strict=True)]
            extra = [*extra, "data.schema=union", f"data.sources={_ratios_toml(mixed)}"]
            after = [*after, *(f"shard-public-{name}" for name in others)]
        init, init_after = source(member, "init_from")
        teacher, teacher_after = source(member, "teacher")
        if member.unlabelled:
            extra, after = [*extra, f"student.unlabelled={unlabelled}"], [*after, "shard-unlabelled"]
        if member.zero_shot:
            extra = [*extra, "model.head.name=ml_decoder", "model.head.text_queries=true"]
        if member.weak_labels:
            extra, after = [*extra, f"data.weak_labels={weak_table}"], [*after, "weak-labels"]
        overrides = [
            f"data.shards={member_shards}",
            *cfg.train.set,
            f"run.out_dir={run_dir}",
            f"resolutions={list(member.resolutions)}",
            *init,
            *teacher,
            *extra,
            *member.set,
        ]
        done = [model_file(cfg, member, size) for size in member.resolutions]
        argv = ["train", base, *_sets(overrides), "--nproc", cfg.train.nproc]
        after = [*after, sharded, *init_after, *teacher_after]
        trained[member.name] = plan.add(
            f"train-{member.name}",
            argv,
            done,
            list(dict.fromkeys(after)),
            heavy=True,
            resume=True,
            ranks=cfg.train.nproc,
        )
        return trained[member.name]

    for m in cfg.members:
        if not m.synthetic:
            train(m, [], base_after)
    synth_report = None
    if cfg.synth is not None:
        s = cfg.synth
        if s.filter_member not in runs or runs[s.filter_member][0].name not in trained:
            real = [name for name, (m, _) in runs.items() if m.name in trained]
            raise ConfigError(f"pipeline.synth.filter_member = {s.filter_member!r}: not one of {real}")
        synth_dir = out / "synth"
        synth_sets = _sets([f"data.shards={shards}", f"run.out_dir={synth_dir}", *s.set])
        synth_train = plan.add(
            "synth-train",
            ["synth", "train", s.config, *synth_sets],
            [synth_dir / "model.pt"],
            [shard],
            heavy=True,
            resume=True,
        )
        filter_model = model_file(cfg, *runs[s.filter_member])
        sample_sets = [*synth_sets, "--set", f"filter.classifier={filter_model}"]
        synthetic = synth_dir / "synthetic"
        sampled = plan.add(
            "synth-sample",
            ["synth", "sample", s.config, *sample_sets],
            [synthetic / "_index.json"],
            [synth_train, trained[runs[s.filter_member][0].name]],
            heavy=True,
        )
        synth_report = synth_dir / "report"
        plan.add("synth-report", ["synth", "report", s.config, *sample_sets], [synth_report / "report.html"], [sampled])
        mix = [f"data.synthetic={synthetic}", f"data.synthetic_ratio={s.synthetic_ratio}"]
        for m in cfg.members:
            if m.synthetic:
                train(m, mix, [*base_after, sampled])

    predictions: dict[str, list[Path]] = {split: [] for split in splits}
    zero_shot: dict[str, list[Path]] = {split: [] for split in splits}
    t3_splits = {sub.split for sub in cfg.submissions if sub.task == "t3"}
    for name, member, size in scored_runs(cfg):
        common = [
            model_file(cfg, member, size),
            "--shards",
            shard_sets[member.level][0],
            "--tta",
            cfg.tta,
            "--name",
            name,
        ]
        # A weak-label member's model also has the Task 3 classes: the ensemble reads its Task 1 columns.
        task1 = ["--classes", ",".join(TASK_SCHEMAS["t1"].classes)] if member.weak_labels else []
        for split in splits:
            path = out / "predictions" / split / f"{name}.csv"
            predictions[split].append(path)
            plan.add(
                f"predict-{name}-{split}",
                ["predict", *common, "--split", split, "--out", path, *task1],
                [path],
                [trained[member.name]],
            )
            if (member.zero_shot or member.weak_labels) and split in t3_splits:
                # A separate file: the ensemble's members must share one class set (the task 1 classes).
                t3 = out / "predictions" / f"{split}-t3" / f"{name}.csv"
                zero_shot[split].append(t3)
                argv = [
                    "predict",
                    *common,
                    "--split",
                    split,
                    "--out",
                    t3,
                    "--classes",
                    ",".join(TASK_SCHEMAS["t3"].classes),
                ]
                # Text-query and prompt members score the names from their text; a weak-label member's
                # fixed head scores its trained rows and takes no descriptions.
                if member.zero_shot:
                    argv += ["--descriptions", TASK_SCHEMAS["t3"].name]
                plan.add(f"predict-{name}-{split}-t3", argv, [t3], [trained[member.name]])

    ensemble_dir = out / "ensemble"
    config = ["--config", cfg.ensemble.config] if cfg.ensemble.config is not None else []
    recipe = ensemble_dir / "recipe.json"
    dev = cfg.dev_split
    built = plan.add(
        "ensemble-build",
        [
            "ensemble",
            "build",
            "--predictions",
            *predictions[dev],
            "--labels",
            labels[dev],
            *config,
            *_sets(cfg.ensemble.set),
            "--out",
            ensemble_dir,
        ],
        [recipe],
        [*(f"predict-{n}-{dev}" for n, _, _ in scored_runs(cfg)), f"labels-{dev}"],
        heavy=True,
    )
    applied: dict[str, Path] = {}
    for split in dict.fromkeys([cfg.test_split, *(sub.split for sub in cfg.submissions if sub.task != "t3")]):
        applied[split] = ensemble_dir / f"{split}.csv"
        # The views CSV lets a recipe whose search chose frontal-weighted view pooling apply to any split.
        plan.add(
            f"ensemble-apply-{split}",
            [
                "ensemble",
                "apply",
                "--recipe",
                recipe,
                "--predictions",
                *predictions[split],
                "--views",
                labels[split],
                "--out",
                applied[split],
            ],
            [applied[split]],
            [built, f"labels-{split}", *(f"predict-{n}-{split}" for n, _, _ in scored_runs(cfg))],
        )

    for sub in cfg.submissions:
        ids = sub.ids if sub.ids is not None else labels[sub.split]
        zip_path = submission_file(cfg, sub)
        if sub.task == "t3":
            scores = zero_shot[sub.split]
            scored_after = [f"predict-{p.stem}-{sub.split}-t3" for p in scores]
        else:
            scores, scored_after = [applied[sub.split]], [f"ensemble-apply-{sub.split}"]
        plan.add(
            f"submit-{sub.task}",
            ["submit", "write", "--task", sub.task, "--ids", ids, "--predictions", *scores, "--out", zip_path],
            [zip_path],
            [*scored_after, f"labels-{sub.split}"],
        )
        truth = sub.labels if sub.labels is not None else (labels[sub.split] if sub.ids is None else None)
        if truth is None:
            continue
        report = report_dir(cfg, sub)
        if sub.task == "t3":
            compared = ["--members", *scores]
        else:
            compared = ["--members", *predictions[sub.split], "--ensemble", applied[sub.split], "--recipe", recipe]
        images = []
        if synth_report is not None and sub.task == "t1":
            images = [
                "--image",
                f"Synthetic tail-class samples (kept by the filter)={synth_report / 'samples.png'}",
                "--image",
                f"Train positives, real vs real + synthetic={synth_report / 'counts.png'}",
            ]
        scored = "zero-shot members" if sub.task == "t3" else "members and ensemble"
        title = f"{cfg.name or out.name}, {TASK_TITLES[sub.task]}: {scored} on the {sub.split} split"
        plan.add(
            f"report-{sub.task}",
            [
                "ensemble",
                "compare",
                "--task",
                sub.task,
                *compared,
                "--labels",
                truth,
                *images,
                "--title",
                title,
                "--out",
                report,
            ],
            [report / "index.html"],
            [
                *scored_after,
                f"labels-{sub.split}",
                *(f"predict-{n}-{sub.split}" for n, _, _ in scored_runs(cfg)),
                *(["synth-report"] if images else []),
            ],
        )
    return plan.steps


TASK_TITLES = {"t1": "Task 1 (40 findings)", "t2": "Task 2 (26 findings, gold labels)", "t3": "Task 3 (zero-shot)"}


def submission_file(cfg: PipelineConfig, sub: Submission) -> Path:
    return cfg.out_dir / "submissions" / f"{sub.task}.zip"


def report_dir(cfg: PipelineConfig, sub: Submission) -> Path:
    return cfg.out_dir / "report" / sub.task


def check_train_steps(cfg: PipelineConfig, steps: Sequence[Step], load: Callable[[Path, list[str]], object]) -> None:
    """Load every train step's config as `cxrlt train` will (`load(config file, --set overrides)`, e.g.
    trainers' TrainConfig loader), so an unknown backbone or a bad size stops the pipeline before it
    shards or tunes. A tuned base config (tune/best.toml) that does not exist yet is stood in for by the
    train step's own base config, which the tune step starts from. ConfigError naming the member."""
    members = {f"train-{m.name}": m for m in cfg.members}
    for step in steps:
        if step.argv[0] != "train" or step.name not in members:
            continue
        base = Path(step.argv[1])
        if not base.is_file() and cfg.tune is not None:
            base = cfg.train.config
        overrides = [step.argv[i + 1] for i, word in enumerate(step.argv) if word == "--set"]
        try:
            load(base, overrides)
        except InputError as e:
            raise ConfigError(f"pipeline member {members[step.name].name!r} ({step.name}, {base}): {e}") from None
