"""`cxrlt zeroshot mine|weak-labels|adapt`: few-shot examples of unseen classes from report text, weak
labels of them for every image of a shard split (trained with `data.weak_labels`), and the query adaptation
that uses the examples. Zero-shot scoring itself is `cxrlt predict --classes ... --descriptions ...`."""

from __future__ import annotations

import argparse
from pathlib import Path

from launch.options import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("zeroshot", help="few-shot examples from reports; adapt class queries")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    mine = actions.add_parser(
        "mine",
        help="label a few reports per class by keyword rules; write an examples CSV",
        description="Rules (TOML, see configs/fewshot-iu-task3.toml) are matched in report sections with "
        "negation cues; one row per image of each drawn report.",
    )
    mine.add_argument(
        "--reports",
        required=True,
        type=Path,
        help="IU X-ray report .tgz or folder of XML, or a MIMIC-CXR report tree (files/pNN/pSUBJECT/sSTUDY.txt)",
    )
    mine.add_argument("--images", type=Path, help="MIMIC-CXR-JPG root: gives MIMIC reports their image (DICOM) ids")
    mine.add_argument("--rules", required=True, type=Path, help="mining config TOML ([rules.<class>] terms)")
    add_overrides(mine)
    mine.add_argument("--out", required=True, type=Path, help="examples CSV")
    mine.set_defaults(run=run_mine)
    weak = actions.add_parser(
        "weak-labels",
        help="label every image of a shard split from its study's report by keyword rules; write a weak-label CSV",
        description="One row per image: dicom_id, study_id, split, then per rule class 1 (affirmed mention), "
        "0 (negated or not mentioned), -1 (only hedged mentions) or blank (no report text). "
        "`cxrlt train --set data.weak_labels=CSV` trains those classes from it.",
    )
    weak.add_argument("--shards", required=True, type=Path, help="shard set whose samples get labels")
    weak.add_argument("--split", action="append", help="shard split to label; repeat for several (default: train)")
    weak.add_argument(
        "--reports",
        type=Path,
        help="MIMIC-CXR report tree (files/pNN/pSUBJECT/sSTUDY.txt); default: the report text the shards carry",
    )
    weak.add_argument("--rules", required=True, type=Path, help="mining config TOML ([rules.<class>] terms)")
    add_overrides(weak)
    weak.add_argument("--out", required=True, type=Path, help="weak-label CSV")
    weak.set_defaults(run=run_weak_labels)
    adapt = actions.add_parser(
        "adapt",
        help="fit the query embeddings of the examples' classes (backbone and decoder frozen)",
        description="Writes a trained-model file scoring --classes (default the model's) plus the "
        "examples' classes; `cxrlt predict` uses it like any other.",
    )
    adapt.add_argument("model", type=Path, help="trained-model file with a text-query head")
    adapt.add_argument("--shards", required=True, type=Path, help="shard set holding the examples' images")
    adapt.add_argument("--split", default="train", help="split holding them (default train)")
    adapt.add_argument("--examples", required=True, type=Path, help="CSV with class,label,image_id columns")
    adapt.add_argument("--classes", default="", help="comma-separated names to score (default the model's)")
    adapt.add_argument("--descriptions", type=Path, help="class descriptions file or packaged name")
    add_overrides(adapt, "few-shot settings: steps, lr, anchor")
    adapt.add_argument("--out", required=True, type=Path, help="adapted trained-model file (.pt)")
    adapt.set_defaults(run=run_adapt)


def run_mine(args: argparse.Namespace) -> int:
    from cxrlt.config import load_config
    from cxrlt.data.mimic_reports import is_mimic_tree, read_mimic_reports
    from cxrlt.data.mining import MiningConfig, mine_examples, write_examples
    from cxrlt.data.reports import read_iu_reports
    from cxrlt.errors import InputError

    cfg = load_config(MiningConfig, args.rules, args.overrides)
    if is_mimic_tree(args.reports):
        if args.images is None:
            raise InputError("--reports is a MIMIC-CXR tree: give --images (MIMIC-CXR-JPG) for the reports' image ids")
        reports = read_mimic_reports(args.reports, args.images)
    else:
        reports = read_iu_reports(args.reports)
    examples = mine_examples(reports, cfg)
    write_examples(examples, args.out)
    for name in cfg.rules:
        labels = [e.label for e in examples if e.class_name == name]
        print(f"{name}: {sum(labels)} positive and {labels.count(0)} negative image rows")
    print(f"wrote {args.out}")
    return 0


def run_weak_labels(args: argparse.Namespace) -> int:
    from cxrlt.config import load_config
    from cxrlt.data.mining import MiningConfig
    from cxrlt.data.weak_labels import mine_split, write_weak_labels

    cfg = load_config(MiningConfig, args.rules, args.overrides)
    table = mine_split(args.shards, args.split or ["train"], cfg, args.reports)
    write_weak_labels(table, args.out)
    for j, name in enumerate(table.classes):
        column = table.labels[:, j]
        print(
            f"{name}: {int((column == 1).sum())} positive, {int((column == 0).sum())} negative, "
            f"{int(table.uncertain[:, j].sum())} uncertain, {int(((column < 0) & ~table.uncertain[:, j]).sum())} "
            "without report text (images)"
        )
    print(f"wrote {args.out}: {len(table.image_ids)} images")
    return 0


def run_adapt(args: argparse.Namespace) -> int:
    from cxrlt.config import load_config
    from cxrlt.data.mining import read_examples
    from cxrlt.models.fewshot import FewShotConfig
    from trainers.fewshot import adapt
    from trainers.request import parse_class_list

    cfg = load_config(FewShotConfig, None, args.overrides)
    out = adapt(
        args.model,
        args.shards,
        args.split,
        read_examples(args.examples),
        args.out,
        parse_class_list(args.classes),
        args.descriptions,
        cfg,
    )
    print(f"wrote {out}")
    return 0
