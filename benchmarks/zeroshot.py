"""Zero-shot and few-shot scoring of held-out findings on the embedded data (CXR-LT Task 3's setting).

Steps (`cxrlt` commands: training in a subprocess, the short adapt / predict commands in this process
to save their start-up time), in WORK (default runs/zeroshot):
  1. shard the embedded NIH sample at 64 px (train 515 / dev 54 / test 52, by patient);
  2. train a text-query ML-Decoder member (class queries from the nih-14 descriptions) with the
     held-out findings' labels unknown (data.unknown_classes: -1 in every training and validation batch);
  3. zero-shot: predict dev and test; a held-out class is scored from its text alone;
  4. few-shot, K = 5 and 10: K positives and 4K negatives of each held-out class from the TRAIN split's
     labels (the NIH sample has no reports, so these "mined" examples come from labels; the keyword
     mining path is `cxrlt zeroshot mine` on report text), `cxrlt zeroshot adapt` (query embeddings only),
     predict dev and test again;
  5. print each held-out class's AP and AUROC on dev + test together (neither was ever trained on for
     these classes; pooled for more positives), next to its prevalence, which is the AP of a random
     scorer (AUROC 0.5).
On 515 training images at 64 px this measures the mechanism honestly, not what it does at scale.
Run from the repository root: `.venv/bin/python benchmarks/zeroshot.py [--epochs N] ...`.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
from synth_ablation import ROOT, cxrlt, sets, split_labels, starter_shards

from cxrlt.data.mining import Example, write_examples
from cxrlt.metrics import class_metrics
from cxrlt.predictions import read_predictions
from launch.main import main as cxrlt_main

HELD_OUT = ("Cardiomegaly", "Effusion", "Pneumothorax")
EVAL_SPLITS = ("dev", "test")
NEGATIVES_PER_POSITIVE = 4


def cxrlt_here(*args: object) -> None:
    """A `cxrlt` command run in this process (same parser and code path as the console script)."""
    print("$", " ".join(map(str, args)), flush=True)
    if cxrlt_main([str(a) for a in args]) != 0:
        raise SystemExit(f"cxrlt {args[0]} failed")


def train_examples(shards: Path, classes: list[str], k: int, seed: int) -> list[Example]:
    """K positives and 4K negatives per held-out class, drawn from the train split's labels."""
    labels = split_labels(shards, "train")
    rng = random.Random(seed)
    examples = []
    for name in HELD_OUT:
        column = classes.index(name)
        for label, count in ((1, k), (0, NEGATIVES_PER_POSITIVE * k)):
            ids = sorted(i for i, row in labels.items() if row[column] == label)
            examples += [Example(name, label, "", i, "NIH label (no reports)") for i in rng.sample(ids, count)]
    return examples


def held_out_metrics(
    work: Path, tag: str, labels: dict[str, np.ndarray], classes: list[str]
) -> dict[str, tuple[float, float]]:
    """class -> (AP, AUROC) over the evaluation splits' predictions written under `tag`."""
    tables = [read_predictions(work / f"{tag}-{split}.csv") for split in EVAL_SPLITS]
    ids = [i for t in tables for i in t.image_ids]
    y_true = np.stack([labels[i] for i in ids])[:, [classes.index(c) for c in HELD_OUT]]
    probs = np.concatenate([t.probs[:, [t.meta.classes.index(c) for c in HELD_OUT]] for t in tables])
    arrays = class_metrics(y_true, probs)
    return {c: (float(arrays.ap[j]), float(arrays.auroc[j])) for j, c in enumerate(HELD_OUT)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "zeroshot")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=16)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.work.resolve()
    started = time.perf_counter()
    shards = starter_shards(work)
    held = "[" + ",".join(f'"{c}"' for c in HELD_OUT) + "]"
    member = work / "member"
    cxrlt(
        "train",
        ROOT / "configs" / "train-starter-tiny.toml",
        *sets(
            f"data.shards={shards}",
            f"run.out_dir={member}",
            f"schedule.epochs={args.epochs}",
            f"data.steps_per_epoch={args.steps_per_epoch}",
            f"data.unknown_classes={held}",
            "model.head.name=ml_decoder",
            "model.head.text_queries=true",
            "model.head.decoder_dim=64",
            "model.head.num_heads=4",
            "model.head.ffn_dim=128",
            "model.class_descriptions=nih-14",
        ),
        "--resume",
    )
    models = {"zero-shot": member / "best.pt"}
    labels = {i: row for split in EVAL_SPLITS for i, row in split_labels(shards, split).items()}
    classes = list(read_predictions(member / "dev_predictions.csv").meta.classes)
    for k in args.shots:
        examples = work / f"examples-{k}.csv"
        write_examples(train_examples(shards, classes, k, args.seed), examples)
        models[f"few-shot K={k}"] = work / f"fewshot-{k}.pt"
        cxrlt_here(
            "zeroshot",
            "adapt",
            member / "best.pt",
            "--shards",
            shards,
            "--split",
            "train",
            "--examples",
            examples,
            "--out",
            models[f"few-shot K={k}"],
        )
    results = {}
    for tag, model in models.items():
        slug = tag.replace(" ", "").replace("=", "")
        for split in EVAL_SPLITS:
            cxrlt_here("predict", model, "--shards", shards, "--split", split, "--out", work / f"{slug}-{split}.csv")
        results[tag] = held_out_metrics(work, slug, labels, classes)
    y = np.stack(list(labels.values()))
    print(
        f"\nheld out of training: {', '.join(HELD_OUT)}; evaluated on {' + '.join(EVAL_SPLITS)} ({len(y)} images); "
        "few-shot examples from train-split labels (no reports for NIH)"
    )
    header = f"{'class':<14}{'pos':>5}{'prev':>8}" + "".join(f"{t + ' AP':>18}{'AUROC':>8}" for t in results)
    print(header)
    for name in HELD_OUT:
        column = y[:, classes.index(name)]
        row = f"{name:<14}{int((column == 1).sum()):>5}{(column == 1).mean():>8.3f}"
        print(row + "".join(f"{r[name][0]:>18.3f}{r[name][1]:>8.3f}" for r in results.values()))
    means = "".join(
        f"{np.mean([ap for ap, _ in r.values()]):>18.3f}{np.mean([auroc for _, auroc in r.values()]):>8.3f}"
        for r in results.values()
    )
    print(f"{'mean':<14}{'':>5}{np.mean([(y[:, classes.index(c)] == 1).mean() for c in HELD_OUT]):>8.3f}" + means)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
