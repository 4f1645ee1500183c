"""Zero-shot scoring of held-out findings on real images with real report text (CXR-LT Task 3's setting):
the contrastive model, the text-query ML-Decoder and prevalence, side by side.

Data: the rehearsal set (`cxrlt rehearsal make --external 0 --public 0`): all 621 embedded real NIH images in
MIMIC-CXR-LT layout, each study paired with a real IU X-ray report, split by patient 70/15/15.

Held out: Cardiomegaly, Pleural Effusion, Pneumothorax. Neither model may see them in training, through
labels or through text:
  - labels: data.unknown_classes (-1 in every training and validation batch, so checkpoint selection
    never sees them either) for those three, plus Hydropneumothorax and Enlarged Cardiomediastinum,
    whose labels would teach the same findings under another name (withheld, not scored);
  - text: a report-trained model that read "mild cardiomegaly" has been taught the class by its
    report. So every report sentence (every section) naming a held-out finding or its usual wording is
    dropped before sharding: HELD_OUT's patterns, e.g. any sentence with "heart", "cardiac",
    "silhouette", "atrial", "effusion", "costophrenic", "blunting", "fluid", "pneumothora". Negated
    sentences go too ("No pneumothorax or pleural effusion."; "Heart size is normal."): they also name
    the finding, and "normal heart size" teaches the boundary of cardiomegaly. The filtered report tree is
    WORK/reports-heldout, and the script checks that no kept sentence matches a pattern.
    `--keep-mentions --work runs/zeroshot-leaky` is the control: reports as written, labels still
    withheld, i.e. what "zero-shot" means for a report-trained model when the text is not filtered.
The text tower is the packaged all-MiniLM-L6-v2, FROZEN in both models (its general-English pretraining
is what knows the word "cardiomegaly"; only the contrastive text projection trains), so both models
score a held-out class through the same frozen sentence embeddings of the same text ("<name>:
<description>", the nih-14 descriptions, WORK/descriptions.toml).

Steps (`cxrlt` commands: training in a subprocess, the short adapt / predict commands in this process
to save their start-up time), in WORK (default runs/zeroshot):
  1. make the rehearsal tree, drop the held-out sentences from its reports, shard it at 64 px with
     the filtered reports (`cxrlt shard mimic-cxr-lt ... --reports WORK/reports-heldout`);
  2. train (a) a text-query ML-Decoder member (configs/train-starter-tiny.toml) on the other classes'
     labels and (b) a contrastive member (configs/contrastive-tiny.toml: CLIP loss on image / report
     pairs, no labels) on the filtered reports; same ConvNeXt-atto from random init, 64 px, batch 16,
     8 epochs x 27 steps (216 steps, ~8 passes over the 435 training images), lr 1e-3, EMA; checkpoint
     by the config's dev metric over the non-held-out classes;
  3. zero-shot: `cxrlt predict` dev and test with both; a held-out class is scored from its text alone
     (the contrastive model: CheXzero's positive-vs-negative prompt softmax, cxrlt.models.contrastive);
  4. few-shot (ML-Decoder only), K = 5 and 10: K positives and 4K negatives of each held-out class from
     the train split's labels, `cxrlt zeroshot adapt` (query embeddings only), predict again;
  5. print each held-out class's positives, AP and AUROC on dev + test together (pooled for more
     positives; neither split was trained on) for every scorer, next to prevalence: the train split's
     positive rate as a constant score, whose AP is the evaluation positive rate and AUROC 0.5, and
     the central 95% of AP / AUROC over 1000 random scorings (the noise at these counts); write the
     table to WORK/zeroshot-table.txt and a per-class AP bar plot to WORK/zeroshot-ap.png.
On 435 training images at 64 px and 216 steps this measures the mechanism honestly, not what either
model does at scale: expect figures near prevalence, and print whatever comes out. About 5 minutes on 2
idle CPU cores (7 when shared); reruns reuse WORK's data and finished members (remove WORK after changing HELD_OUT).
Run from the repository root: `.venv/bin/python benchmarks/zeroshot.py [--epochs N] [--shots 5 10] ...`.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from synth_ablation import ROOT, cxrlt, sets, split_labels

from cxrlt.data.mimic_reports import report_sections
from cxrlt.data.mining import Example, write_examples
from cxrlt.labels import canonical_name
from cxrlt.metrics import class_metrics
from cxrlt.models.descriptions import load_descriptions
from cxrlt.predictions import read_predictions
from launch.main import main as cxrlt_main

# Held-out class -> what a report sentence says to name it (lower-cased text, re.search).
HELD_OUT = {
    "Cardiomegaly": r"cardi(?!opulmonary)|\bheart\b|silhouette|\batri(?:al|um|a)\b|ventric",  # not "cardiopulmonary"
    "Pleural Effusion": r"effusion|costophrenic|\bcp angle|blunt|\bfluid\b|hydrothorax|meniscus",
    "Pneumothorax": r"pneumothora",  # also hydropneumothorax, pneumothoraces
}
WITHHELD_TOO = ("Hydropneumothorax", "Enlarged Cardiomediastinum")  # labels withheld, not scored
EVAL_SPLITS = ("dev", "test")
NEGATIVES_PER_POSITIVE = 4
MENTION = re.compile("|".join(f"(?:{p})" for p in HELD_OUT.values()))
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def cxrlt_here(*args: object) -> None:
    """A `cxrlt` command run in this process (same parser and code path as the console script)."""
    print("$", " ".join(map(str, args)), flush=True)
    if cxrlt_main([str(a) for a in args]) != 0:
        raise SystemExit(f"cxrlt {args[0]} failed")


def strip_mentions(text: str) -> tuple[str, int]:
    """(the text without its sentences naming a held-out finding, how many were dropped); a list
    number left alone ("2.") goes with its sentence."""
    kept, dropped = [], 0
    for sentence in SENTENCE_END.split(text):
        if MENTION.search(sentence.lower()):
            dropped += 1
        elif sentence.strip() and not re.fullmatch(r"\d+\.", sentence.strip()):
            kept.append(sentence.strip())
    return " ".join(kept), dropped


def filter_reports(source: Path, out: Path) -> tuple[int, int]:
    """Copy the MIMIC report tree `source` (its files/) to `out`, every section filtered by
    strip_mentions and written back in MIMIC layout; (reports, sentences dropped)."""
    reports = dropped = 0
    for path in sorted((source / "files").glob("p[0-9][0-9]/p*/s*.txt")):
        lines = [f"{'FINAL REPORT':>45}"]
        for name, body in report_sections(path.read_text(encoding="utf-8")).items():
            text, n = strip_mentions(body)
            dropped += n
            if text:
                lines += [f" {name}:  {text}", " "]
        target = out / "files" / path.relative_to(source / "files")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        reports += 1
    leaks = [
        p
        for p in (out / "files").glob("p[0-9][0-9]/p*/s*.txt")
        if any(MENTION.search(t.lower()) for t in report_sections(p.read_text(encoding="utf-8")).values())
    ]
    if leaks:
        raise SystemExit(f"{leaks[0]}: a held-out finding is still named after filtering")
    return reports, dropped


def prepare_data(work: Path, keep_mentions: bool) -> Path:
    """WORK/shards: the rehearsal tree at 64 px with held-out sentences dropped from its reports (kept
    as written with `keep_mentions`)."""
    shards, tree = work / "shards", work / "rehearsal-data"
    if (shards / "_index.json").is_file():
        return shards
    cxrlt("rehearsal", "make", "--out", tree, "--external", 0, "--public", 0, "--quiet")
    reports = tree / "mimic-cxr" / "2.0.0"
    if not keep_mentions:
        count, dropped = filter_reports(reports, work / "reports-heldout")
        print(f"reports: {count} filtered, {dropped} sentences naming a held-out finding dropped", flush=True)
        reports = work / "reports-heldout"
    csvs = tree / "cxr-lt-2024"
    cxrlt(
        "shard",
        "mimic-cxr-lt",
        "--images",
        tree / "mimic-cxr-jpg" / "2.0.0",
        "--labels",
        f"train={csvs / 'train_labeled.csv'}",
        "--labels",
        f"dev={csvs / 'development_labeled_task1.csv'}",
        "--labels",
        f"test={csvs / 'test_labeled_task1.csv'}",
        "--reports",
        reports,
        "--max-size",
        64,
        "--workers",
        1,
        "--out",
        shards,
    )
    return shards


def write_descriptions(path: Path) -> Path:
    """The held-out classes' nih-14 descriptions under their CXR-LT names (Effusion -> Pleural Effusion)."""
    nih = {canonical_name(k, "nih"): v for k, v in load_descriptions("nih-14").items()}
    body = "".join(f'"{c}" = "{nih[c]}"\n' for c in HELD_OUT)
    path.write_text(f"[descriptions]\n{body}", encoding="utf-8")
    return path


def train_examples(shards: Path, classes: list[str], k: int, seed: int) -> list[Example]:
    """K positives and 4K negatives per held-out class, drawn from the train split's labels."""
    labels = split_labels(shards, "train")
    rng = random.Random(seed)
    examples = []
    for name in HELD_OUT:
        column = classes.index(name)
        for label, count in ((1, k), (0, NEGATIVES_PER_POSITIVE * k)):
            ids = sorted(i for i, row in labels.items() if row[column] == label)
            examples += [Example(name, label, "", i, "train-split label") for i in rng.sample(ids, count)]
    return examples


def held_out_metrics(y_true: np.ndarray, probs: np.ndarray) -> list[tuple[float, float]]:
    """Per held-out class (AP, AUROC); y_true / probs are (N, held-out classes)."""
    arrays = class_metrics(y_true, probs)
    return [(float(ap), float(auroc)) for ap, auroc in zip(arrays.ap, arrays.auroc)]


def random_ranges(y_true: np.ndarray, draws: int, seed: int) -> list[tuple[float, float, float, float]]:
    """Per held-out class, then their mean: the central 95% of AP and AUROC over `draws` uniformly random
    scorings of the same labels (ap_lo, ap_hi, auroc_lo, auroc_hi), the noise a difference must beat.
    Images of one study share labels, so this still understates the noise a little."""
    rng = np.random.default_rng(seed)
    per_class = []
    for j in range(y_true.shape[1]):
        column = np.repeat(y_true[:, j : j + 1], draws, axis=1)
        arrays = class_metrics(column, rng.random(column.shape))
        per_class.append((arrays.ap, arrays.auroc))
    per_class.append((np.mean([a for a, _ in per_class], 0), np.mean([u for _, u in per_class], 0)))
    return [(*np.percentile(ap, [2.5, 97.5]), *np.percentile(auroc, [2.5, 97.5])) for ap, auroc in per_class]


def predicted(work: Path, slug: str, ids: list[str]) -> np.ndarray:
    """The held-out classes' probabilities in `ids` order, from WORK/<slug>-<split>.csv."""
    rows = {}
    for split in EVAL_SPLITS:
        table = read_predictions(work / f"{slug}-{split}.csv")
        columns = [table.meta.classes.index(c) for c in HELD_OUT]
        rows.update(zip(table.image_ids, table.probs[:, columns]))
    return np.stack([rows[i] for i in ids])


def plot(
    results: dict[str, list[tuple[float, float]]],
    noise: list[tuple[float, float, float, float]],
    positives: list[int],
    path: Path,
) -> None:
    """Grouped bars of per-class and mean AP, over a grey band: random scorings' central 95% AP."""
    names = [*HELD_OUT, "mean"]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(results)
    for i, (lo, hi, _, _) in enumerate(noise):
        ax.fill_between([i - 0.45, i + 0.45], lo, hi, color="0.85", label="random scores, 95%" if i == 0 else None)
    for j, (tag, scores) in enumerate(results.items()):
        aps = [ap for ap, _ in scores]
        x = np.arange(len(names)) + (j - (len(results) - 1) / 2) * width
        ax.bar(x, [*aps, float(np.mean(aps))], width, label=tag)
    ax.set_xticks(np.arange(len(names)), [f"{n}\n({p} pos)" for n, p in zip(names, positives)] + ["mean"])
    ax.set(ylabel="AP", title="Held-out findings: AP on dev + test (prevalence = a constant score)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "zeroshot")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=27, help="default: one pass of 435 images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shots", type=int, nargs="*", default=[5, 10], help="few-shot K values (none: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep-mentions",
        action="store_true",
        help="control run: train the contrastive model on the unfiltered reports (the held-out findings "
        "seen through text, labels still withheld); use another --work",
    )
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def progress(step: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {step}", flush=True)

    progress(f"data: rehearsal tree, held-out sentences {'KEPT' if args.keep_mentions else 'dropped'}, 64 px shards")
    shards = prepare_data(work, args.keep_mentions)
    descriptions = write_descriptions(work / "descriptions.toml")
    unknown = "[" + ",".join(f'"{c}"' for c in [*HELD_OUT, *WITHHELD_TOO]) + "]"
    common = (
        f"data.shards={shards}",
        f"run.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"schedule.epochs={args.epochs}",
        f"data.steps_per_epoch={args.steps_per_epoch}",
        f"data.batch_size={args.batch_size}",
        f"data.unknown_classes={unknown}",
        f"model.class_descriptions={descriptions}",
        "data.transform.size=64",
        "model.backbone.name=convnext_atto",
        "optim.lr=1e-3",
        "optim.warmup_steps=2",
        "model.text_encoder.trainable=false",
    )
    progress("train (a): text-query ML-Decoder on the other classes' labels")
    decoder, contrastive = work / "ml-decoder", work / "contrastive"
    cxrlt(
        "train",
        ROOT / "configs" / "train-starter-tiny.toml",
        *sets(
            *common,
            f"run.out_dir={decoder}",
            "model.head.name=ml_decoder",
            "model.head.text_queries=true",
            "model.head.decoder_dim=64",
            "model.head.num_heads=4",
            "model.head.ffn_dim=128",
        ),
        "--resume",
    )
    progress("train (b): contrastive, image vs report text, frozen MiniLM")
    cxrlt(
        "train",
        ROOT / "configs" / "contrastive-tiny.toml",
        *sets(*common, f"run.out_dir={contrastive}"),
        "--resume",
    )
    models = {"ML-Decoder zero-shot": decoder / "best.pt", "contrastive zero-shot": contrastive / "best.pt"}
    classes = list(read_predictions(decoder / "dev_predictions.csv").meta.classes)
    for k in args.shots:
        progress(f"few-shot adapt K={k}")
        examples = work / f"examples-{k}.csv"
        write_examples(train_examples(shards, classes, k, args.seed), examples)
        models[f"ML-Decoder few-shot K={k}"] = work / f"fewshot-{k}.pt"
        cxrlt_here(
            "zeroshot",
            "adapt",
            decoder / "best.pt",
            "--shards",
            shards,
            "--split",
            "train",
            "--examples",
            examples,
            "--out",
            models[f"ML-Decoder few-shot K={k}"],
        )
    progress("predict dev + test")
    labels = {i: row for split in EVAL_SPLITS for i, row in split_labels(shards, split).items()}
    ids = sorted(labels)
    columns = [classes.index(c) for c in HELD_OUT]
    y = np.stack([labels[i] for i in ids])[:, columns]
    prevalence = np.stack(list(split_labels(shards, "train").values()))[:, columns]
    prevalence = (prevalence == 1).sum(0) / (prevalence >= 0).sum(0)
    results = {"prevalence": held_out_metrics(y, np.broadcast_to(prevalence, y.shape).copy())}
    for tag, model in models.items():
        slug = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-")
        for split in EVAL_SPLITS:
            out = work / f"{slug}-{split}.csv"
            names = ",".join(HELD_OUT)
            cxrlt_here("predict", model, "--shards", shards, "--split", split, "--out", out, "--classes", names)
        results[tag] = held_out_metrics(y, predicted(work, slug, ids))

    positives = [int((y[:, j] == 1).sum()) for j in range(len(HELD_OUT))]
    noise = random_ranges(y, draws=1000, seed=args.seed)
    lines = [
        f"held out ({'labels only: report sentences KEPT' if args.keep_mentions else 'labels and report sentences'})"
        f": {', '.join(HELD_OUT)}; labels also withheld: "
        f"{', '.join(WITHHELD_TOO)}",
        f"evaluated on {' + '.join(EVAL_SPLITS)}: {len(ids)} images; {args.epochs * args.steps_per_epoch} steps of "
        f"batch {args.batch_size} at 64 px; frozen MiniLM text tower; prevalence = train positive rate as score",
        f"{'cells: AP / AUROC':<26}" + "".join(f"{c:>24}" for c in [*HELD_OUT, "mean"]),
        f"{'positives / images':<26}" + "".join(f"{f'{p} / {len(ids)}':>24}" for p in positives),
    ]
    for tag, scores in results.items():
        means = (float(np.mean([s[0] for s in scores])), float(np.mean([s[1] for s in scores])))
        lines.append(f"{tag:<26}" + "".join(f"{f'{ap:.3f} / {auroc:.3f}':>24}" for ap, auroc in [*scores, means]))
    lines.append(
        f"{'random scores, 95% range':<26}"
        + "".join(f"{f'{a:.2f}-{b:.2f} / {c:.2f}-{d:.2f}':>24}" for a, b, c, d in noise)
    )
    table = "\n".join(lines)
    print("\n" + table)
    (work / "zeroshot-table.txt").write_text(table + "\n", encoding="utf-8")
    plot(results, noise, positives, work / "zeroshot-ap.png")
    print(f"table {work / 'zeroshot-table.txt'}; plot {work / 'zeroshot-ap.png'}")
    progress("done")


if __name__ == "__main__":
    main()
