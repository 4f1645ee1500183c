"""`cxrlt zeroshot mine|adapt`: few-shot examples of unseen classes from report text, and the query
adaptation that uses them. Zero-shot scoring itself is `cxrlt predict --classes ... --descriptions ...`."""

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
