"""Weak labels of the Task 3 findings mined from reports and trained inside a member: the rules' reading
of hedged and negated mentions, their agreement with the curators' MeSH terms (the rehearsal's answer
key), the weak-label table of a MIMIC-layout tree (the rehearsal set, sharded at 64 px), and one real
one-rank training run whose Task 3 rows `cxrlt predict --classes` scores."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import trainers.loop
from cxrlt.config import load_config
from cxrlt.data.mining import NEGATIVE, POSITIVE, UNCERTAIN, MiningConfig, classify
from cxrlt.data.rehearsal_reports import mesh_classes
from cxrlt.data.reports import Report, read_iu_reports
from cxrlt.data.weak_labels import WeakLabelTable, read_weak_labels, study_labels
from cxrlt.labels import CXR_LT_2024_TASK1, CXR_LT_2024_TASK3
from cxrlt.models.saved import load_model
from cxrlt.predictions import read_predictions
from launch.main import main as cxrlt_main
from tests.trainers.conftest import CONFIG
from tests.zeroshot.conftest import clear_rendezvous
from trainers.config import TrainConfig
from trainers.modelinit import build_member_model

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "configs" / "fewshot-mimic-task3.toml"
T3 = CXR_LT_2024_TASK3.classes
HELD_OUT = "Atelectasis"  # unknown in every batch: its head row must not move (the control)


@pytest.fixture(scope="module")
def rules() -> MiningConfig:
    return load_config(MiningConfig, RULES)


def test_affirmed_hedged_and_negated_mentions(rules):
    scoliosis, hilum = rules.rules["Scoliosis"], rules.rules["Hilum"]
    cases = {
        "Mild dextroscoliosis of the thoracic spine.": POSITIVE,
        "No scoliosis.": NEGATIVE,
        "Scoliosis is not seen.": NEGATIVE,
        "Heart size is normal.": NEGATIVE,
        "Possible mild scoliosis.": UNCERTAIN,
        "Scoliosis cannot be excluded.": UNCERTAIN,
        "Can not exclude scoliosis.": UNCERTAIN,  # hedging is read before the "not" in it
        "Possible scoliosis. Levoscoliosis of the lumbar spine.": POSITIVE,  # an affirmed mention wins
    }
    for text, label in cases.items():
        assert classify(Report("r", {"FINDINGS": text}), scoliosis, rules).label == label, text
    assert classify(Report("r", {"IMPRESSION": "Prominent hilar contours."}), hilum, rules).label == POSITIVE
    assert classify(Report("r", {"IMPRESSION": "Normal hilar contours."}), hilum, rules).label == NEGATIVE
    # No FINDINGS / IMPRESSION text: nothing to read a finding's absence from, so no label at all.
    assert study_labels(Report("r", {"INDICATION": "Cough."}), rules) is None


def test_rules_agree_with_the_curators_mesh_terms(shared_data, rules, capsys):
    """The rehearsal's Task 3 answer key is each report's MeSH terms (mesh_classes): over all 3,955 IU
    reports the rules find the same reports (Cardiomyopathy has no MeSH counterpart there)."""
    reports = read_iu_reports(shared_data / "reports" / "NLMCXR_reports.tgz")
    floors = {"Bulla": (0.85, 0.9), "Hilum": (0.6, 0.9), "Osteopenia": (0.9, 0.9), "Scoliosis": (0.9, 0.9)}
    for name, (min_precision, min_recall) in floors.items():
        mined = {r.report_id for r in reports if classify(r, rules.rules[name], rules).label == POSITIVE}
        key = {r.report_id for r in reports if name in mesh_classes(r.mesh)}
        precision, recall = len(mined & key) / len(mined), len(mined & key) / len(key)
        with capsys.disabled():
            print(f"\n{name}: precision {precision:.2f}, recall {recall:.2f} ({len(mined)} mined, {len(key)} in MeSH)")
        assert precision >= min_precision and recall >= min_recall, name


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weak-rehearsal") / "tree"
    assert cxrlt_main(["rehearsal", "make", "--out", str(out), "--images", "150", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def shards(tree: Path) -> Path:
    out = tree.parent / "shards"
    lt = tree / "cxr-lt-2024"
    labels = [f"{s}={lt / f}" for s, f in (("train", "train_labeled.csv"), ("dev", "development_labeled_task1.csv"))]
    labels.append(f"test={lt / 'test_labeled_task1.csv'}")
    argv = ["shard", "mimic-cxr-lt", "--out", str(out), "--images", str(tree / "mimic-cxr-jpg" / "2.0.0")]
    argv += [w for spec in labels for w in ("--labels", spec)]
    argv += ["--reports", str(tree / "mimic-cxr" / "2.0.0" / "files"), "--max-size", "64", "--workers", "1"]
    assert cxrlt_main(argv) == 0
    return out


@dataclass
class Mined:
    path: Path
    table: WeakLabelTable
    hedged_study: str  # its report rewritten: a hedged bulla, a negated scoliosis, an affirmed osteopenia
    missing_study: str  # its report file deleted


@pytest.fixture(scope="module")
def mined(tree: Path, shards: Path) -> Mined:
    """`cxrlt zeroshot weak-labels` over train + dev of the rehearsal tree, two train reports edited first."""
    train = pd.read_csv(tree / "cxr-lt-2024" / "train_labeled.csv", dtype=str)
    studies = train.drop_duplicates("study_id")[["subject_id", "study_id"]].values.tolist()
    (subject, hedged), (missing_subject, missing) = studies[0], studies[1]
    files = tree / "mimic-cxr" / "2.0.0" / "files"
    (files / f"p{subject[:2]}" / f"p{subject}" / f"{hedged}.txt").write_text(
        "FINAL REPORT\n FINDINGS: Possible bulla at the left apex. No scoliosis.\n IMPRESSION: Diffuse osteopenia.\n"
    )
    (files / f"p{missing_subject[:2]}" / f"p{missing_subject}" / f"{missing}.txt").unlink()
    out = tree.parent / "weak-labels.csv"
    argv = ["zeroshot", "weak-labels", "--shards", str(shards), "--split", "train", "--split", "dev"]
    argv += ["--reports", str(files), "--rules", str(RULES), "--out", str(out)]
    assert cxrlt_main(argv) == 0
    return Mined(out, read_weak_labels(out), hedged, missing)


def test_the_table_holds_every_image_of_the_splits_with_its_report_labels(tree, mined):
    table = mined.table
    assert table.classes == T3
    lt = tree / "cxr-lt-2024"
    for split, name in (("train", "train_labeled.csv"), ("dev", "development_labeled_task1.csv")):
        truth = pd.read_csv(lt / name, dtype=str)
        rows = [i for i, s in enumerate(table.splits) if s == split]
        assert sorted(table.image_ids[i] for i in rows) == sorted(truth["dicom_id"])
        study_of = dict(zip(truth["dicom_id"], truth["study_id"]))
        assert all(table.study_ids[i] == study_of[table.image_ids[i]] for i in rows)
    by_study = {s: table.labels[i] for i, s in enumerate(table.study_ids)}
    hedged = dict(zip(T3, by_study[mined.hedged_study].tolist()))
    assert hedged == {"Bulla": -1.0, "Cardiomyopathy": 0.0, "Hilum": 0.0, "Osteopenia": 1.0, "Scoliosis": 0.0}
    rows = [i for i, s in enumerate(table.study_ids) if s == mined.hedged_study]
    assert table.uncertain[rows, T3.index("Bulla")].all() and not table.uncertain[rows, 1:].any()
    assert (by_study[mined.missing_study] == -1).all()  # no report: unknown, written blank
    text = mined.path.read_text().splitlines()
    assert text[0] == "dicom_id,study_id,split," + ",".join(T3)
    assert any(line.endswith(",-1,0,0,1,0") and mined.hedged_study in line for line in text)
    assert any(line.endswith(",,,,,") and mined.missing_study in line for line in text)


def test_dev_weak_labels_against_the_rehearsal_answer_key(tree, mined, capsys):
    """The answer key of the dev split comes from the reports' MeSH terms, not their text."""
    key = pd.read_csv(tree / "answers" / "development_labeled_task3.csv", dtype=str).set_index("dicom_id")
    rows = [i for i, s in enumerate(mined.table.splits) if s == "dev"]
    ids = [mined.table.image_ids[i] for i in rows]
    assert sorted(ids) == sorted(key.index)
    truth = key.loc[ids, list(T3)].astype(int).to_numpy()
    weak = mined.table.labels[rows]
    known = weak >= 0
    agreement = float((weak[known] == truth[known]).mean())
    with capsys.disabled():
        for j, name in enumerate(T3):
            hits = int(((weak[:, j] == 1) & (truth[:, j] == 1)).sum())
            positives, in_key = int((weak[:, j] == 1).sum()), int(truth[:, j].sum())
            print(f"\ndev {name}: {positives} weak positives, {in_key} in the key, {hits} both")
        print(f"dev agreement on known labels: {agreement:.3f} over {int(known.sum())} image-class pairs")
    assert agreement >= 0.9


def test_the_shards_own_report_text_gives_the_same_labels(tree, shards, mined, tmp_path):
    out = tmp_path / "from-shards.csv"
    assert (
        cxrlt_main(["zeroshot", "weak-labels", "--shards", str(shards), "--rules", str(RULES), "--out", str(out)]) == 0
    )
    from_shards = read_weak_labels(out)
    assert set(from_shards.splits) == {"train"}
    edited = {mined.hedged_study, mined.missing_study}
    table = mined.table
    tree_rows = {i: r for i, s, r in zip(table.image_ids, table.study_ids, table.labels) if s not in edited}
    for image, study, row in zip(from_shards.image_ids, from_shards.study_ids, from_shards.labels):
        if study not in edited:
            assert (tree_rows[image] == row).all(), image


@dataclass
class Recorded:
    counts: list = field(default_factory=list)
    targets: list[tuple[list[str], torch.Tensor]] = field(default_factory=list)


@dataclass
class Trained:
    model: Path
    config: TrainConfig
    recorded: Recorded


@pytest.fixture(scope="module")
def trained(shards: Path, mined: Mined) -> Trained:
    """`cxrlt train` (one rank, in this process) with data.weak_labels, the loss wrapped to record the
    counts its class weights came from and every target matrix (the loop is the real one)."""
    recorded = Recorded()
    real_loss, real_step = trainers.loop.build_loss, trainers.loop.train_step

    class RecordingLoss(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner, self.ids = inner, []

        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            recorded.targets.append((self.ids, targets.detach().cpu().clone()))
            return self.inner(logits, targets)

    def recording_loss(cfg, counts=None, total=None):
        recorded.counts.append(list(counts))
        return RecordingLoss(real_loss(cfg, counts, total))

    def recording_step(engine, criterion, batch, *args, **kwargs):
        criterion.ids = list(batch["id"])
        return real_step(engine, criterion, batch, *args, **kwargs)

    work = shards.parent / "train"
    sets = [
        f"data.shards={shards}",
        f"run.out_dir={work / 'run'}",
        f"run.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"data.weak_labels={mined.path}",
        f'data.unknown_classes=["{HELD_OUT}"]',
        "data.transform.size=32",
        "data.steps_per_epoch=4",
        "schedule.epochs=1",
        "optim.weight_decay=0",  # a head row then moves only where a known label sent a gradient
    ]
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainers.loop, "build_loss", recording_loss)
        patch.setattr(trainers.loop, "train_step", recording_step)
        patch.chdir(shards.parent)
        clear_rendezvous(patch)
        try:
            status = cxrlt_main(["train", str(CONFIG), *[w for s in sets for w in ("--set", s)]])
        finally:
            for signum, handler in saved_signals.items():  # the one-rank worker installs its own for good
                signal.signal(signum, handler)
    assert status == 0
    return Trained(work / "run" / "best.pt", load_config(TrainConfig, CONFIG, sets), recorded)


def test_a_weak_label_member_trains_the_task3_classes(trained, mined):
    saved = load_model(trained.model)
    classes = (*CXR_LT_2024_TASK1.classes, *T3)
    assert saved.classes == classes and saved.schema == "cxr-lt-2024-all"
    # The weighted ASL's class weights read the Task 3 classes' frequency among the table's known
    # training labels, as an effective count over the training split (the images without a report
    # are unknown, not negative).
    train = mined.table.labels[[s == "train" for s in mined.table.splits]]
    frequency = (train == 1).sum(0) / (train >= 0).sum(0)
    [counts] = trained.recorded.counts
    assert len(counts) == len(classes) and counts[-5:] == pytest.approx(frequency * len(train))
    # Every Task 3 target is the table's label of that image; the rest of the row is the shards'.
    row = {i: r for i, r in zip(mined.table.image_ids, mined.table.labels)}
    seen = torch.cat([t[:, -5:] for _, t in trained.recorded.targets])
    expected = np.concatenate([[row[i] for i in ids] for ids, _ in trained.recorded.targets])
    assert np.array_equal(seen.numpy(), expected) and (seen == 1).any() and (seen == 0).any()
    # Task 3 rows moved from their initial values; the held-out class's row (never a known label) did not.
    torch.manual_seed(trained.config.run.seed)
    initial = build_member_model(trained.config, classes).state_dict()
    for key in ("head.fc.weight", "head.fc.bias"):
        moved = (saved.state_dict[key] - initial[key]).abs().reshape(len(classes), -1).amax(1)
        assert (moved[-5:] > 0).all() and moved[classes.index(HELD_OUT)] == 0, key


def test_dev_metrics_score_the_weak_dev_labels_and_skip_unknowns(trained, mined):
    per_class = pd.read_csv(trained.model.parent / "per_class.csv").set_index("name")
    dev = [i for i, s in enumerate(mined.table.splits) if s == "dev"]
    for j, name in enumerate(T3):
        assert per_class.loc[name, "n"] == int((mined.table.labels[dev, j] >= 0).sum())
    assert per_class.loc[HELD_OUT, "n"] == 0


def test_predict_scores_the_trained_task3_rows(trained, shards, tmp_path, cli):
    common = [trained.model, "--shards", shards, "--split", "dev"]
    assert cli("predict", *common, "--out", tmp_path / "all.csv")[0] == 0
    assert cli("predict", *common, "--classes", ",".join(T3), "--out", tmp_path / "t3.csv")[0] == 0
    task1 = ",".join(CXR_LT_2024_TASK1.classes)
    assert cli("predict", *common, "--classes", task1, "--out", tmp_path / "t1.csv")[0] == 0
    every, t3, t1 = (read_predictions(tmp_path / f"{n}.csv") for n in ("all", "t3", "t1"))
    schemas = (t3.meta.schema, t1.meta.schema, every.meta.schema)
    assert schemas == ("cxr-lt-2024-task3", "cxr-lt-2024-task1", "cxr-lt-2024-all")
    assert np.array_equal(t3.probs, every.probs[:, -5:]) and np.array_equal(t1.probs, every.probs[:, :-5])
    status, _, err = cli("predict", *common, "--classes", "Bulla,Pneumonitis", "--out", tmp_path / "x.csv")
    assert status == 2 and "without ['Pneumonitis']" in err
