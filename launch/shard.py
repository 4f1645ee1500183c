"""`cxrlt shard SOURCE ... --out DIR`: raw dataset -> WebDataset shards + _index.json (cxrlt.data)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxrlt.data.records import SourceTable
    from cxrlt.labels import Schema

SOURCES = ("mimic-cxr-lt", "nih", "chexpert", "padchest", "vindr-cxr", "brax", "csv", "starter")
# Sources whose images are (or may be) DICOM files: read through cxrlt.data.dicom.
DICOM_SOURCES = ("vindr-cxr", "brax")
DEFAULT_SCHEMA = {
    "mimic-cxr-lt": "cxr-lt-2024-task1",
    "nih": "nih-14",
    "starter": "nih-14",
    "chexpert": "chexpert-14",
    "padchest": "padchest",
    "vindr-cxr": "vindr-cxr",
    "brax": "chexpert-14",
}
POLICIES = ("unknown", "positive", "negative")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("shard", help="convert a raw dataset into WebDataset shards")
    p.add_argument("source", choices=SOURCES)
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--schema", help="target label schema (`cxrlt schemas`); default depends on the source")
    p.add_argument("--images", help="image root: MIMIC-CXR-JPG folder, NIH images, CheXpert parent, ...")
    p.add_argument(
        "--table", help="label CSV for nih / chexpert / padchest / brax / csv; vindr-cxr: image_labels_train.csv"
    )
    p.add_argument("--test-table", help="vindr-cxr: image_labels_test.csv (5-radiologist consensus, the test split)")
    p.add_argument(
        "--merge",
        choices=("majority", "any"),
        default="majority",
        help="vindr-cxr: a training label is positive when most (default) or any of its 3 radiologists marked it",
    )
    p.add_argument(
        "--image-copy", choices=("png", "dicom"), default="png", help="brax: shard its PngPath or DicomPath images"
    )
    p.add_argument("--labels", action="append", default=[], metavar="[SPLIT=]CSV", help="mimic-cxr-lt label CSV")
    p.add_argument("--metadata", help="mimic-cxr-2.0.0-metadata.csv(.gz): view positions, study times")
    p.add_argument("--reports", help="MIMIC-CXR report folder (files/pXX/...txt): INDICATION sections")
    p.add_argument("--ed-stays", help="MIMIC-IV-ED edstays.csv(.gz)")
    p.add_argument("--ed-triage", help="MIMIC-IV-ED triage.csv(.gz): vitals")
    p.add_argument(
        "--uncertain", choices=POLICIES, default="unknown", help="meaning of a -1 label (chexpert, brax, csv)"
    )
    p.add_argument(
        "--blank", choices=POLICIES, help="meaning of a blank label (chexpert, brax: negative; csv: unknown)"
    )
    p.add_argument("--columns", action="append", default=[], metavar="FIELD=COLUMN", help="csv column map")
    p.add_argument("--label-columns", help="csv: comma-separated label columns (default: the schema's names)")
    p.add_argument("--level", choices=("image", "study"), default="image")
    p.add_argument(
        "--max-views",
        type=int,
        default=0,
        help="study level: store at most this many views per study, frontal first (the rest are counted as "
        "views_dropped in _index.json); default 0 stores every view, which predictions need to cover every image",
    )
    p.add_argument("--max-size", type=int, default=512, help="long side of stored images, pixels")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--split-by", choices=("patient", "none"), default="patient")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,dev,test fractions for sources without a split")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def _require(args: argparse.Namespace, *names: str) -> None:
    from cxrlt.errors import InputError

    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise InputError(f"source {args.source} needs {' '.join(missing)}")


def _label_files(specs: list[str]) -> dict:
    from pathlib import Path

    from cxrlt.data.sources.mimic import split_of
    from cxrlt.errors import InputError

    files: dict[str, Path] = {}
    for spec in specs:
        split, sep, path = spec.partition("=")
        split, path = (split, path) if sep else (split_of(spec), spec)
        if split in files:
            raise InputError(f"--labels: two files for split {split!r} ({files[split]}, {path})")
        files[split] = Path(path)
    if not files:
        raise InputError("source mimic-cxr-lt needs at least one --labels CSV")
    return files


def read_source(args: argparse.Namespace, schema: Schema) -> SourceTable:
    """The source's records; its reader modules are imported here so `cxrlt --help` stays fast."""
    from cxrlt.config import from_dict
    from cxrlt.data.sources.brax import read_brax
    from cxrlt.data.sources.chexpert import read_chexpert
    from cxrlt.data.sources.csvfolder import CsvColumns, read_csv_folder
    from cxrlt.data.sources.mimic import read_mimic_cxr_lt
    from cxrlt.data.sources.nih import read_nih
    from cxrlt.data.sources.padchest import read_padchest
    from cxrlt.data.sources.starter import read_starter
    from cxrlt.data.sources.vindr import read_vindr
    from cxrlt.errors import InputError

    if args.source == "starter":
        return read_starter(schema)
    if args.source == "mimic-cxr-lt":
        _require(args, "images")
        return read_mimic_cxr_lt(
            args.images, _label_files(args.labels), schema, args.metadata, args.reports, args.ed_stays, args.ed_triage
        )
    if args.source == "vindr-cxr":
        _require(args, "images")
        return read_vindr(args.table, args.test_table, args.images, schema, args.merge)
    _require(args, "table")
    if args.source == "brax":
        _require(args, "images")
        return read_brax(args.table, args.images, schema, args.image_copy, args.uncertain, args.blank or "negative")
    if args.source == "nih":
        return read_nih(args.table, args.images, schema)
    if args.source == "chexpert":
        return read_chexpert(args.table, args.images, schema, args.uncertain, args.blank or "negative")
    if args.source == "padchest":
        return read_padchest(args.table, args.images, schema)
    _require(args, "images")
    mapping: dict[str, object] = {"uncertain": args.uncertain, "blank": args.blank or "unknown"}
    for item in args.columns:
        field, sep, column = item.partition("=")
        if not sep:
            raise InputError(f"--columns {item!r}: expected FIELD=COLUMN")
        mapping[field] = column
    if args.label_columns:
        mapping["labels"] = [c.strip() for c in args.label_columns.split(",") if c.strip()]
    return read_csv_folder(args.table, args.images, schema, from_dict(CsvColumns, mapping, lambda key: "--columns"))


def run(args: argparse.Namespace) -> int:
    from cxrlt.data.build import BuildOptions, build_shards
    from cxrlt.data.dicom import DicomLoader
    from cxrlt.data.writer import WriterOptions
    from cxrlt.errors import InputError
    from cxrlt.labels import get_schema

    name = args.schema or DEFAULT_SCHEMA.get(args.source)
    if name is None:
        raise InputError(f"source {args.source} needs --schema")
    try:
        schema = get_schema(name)
    except KeyError as e:
        raise InputError(e.args[0]) from None
    table = read_source(args, schema)
    build = BuildOptions(args.level, args.max_views, args.split_by, args.split, args.seed)
    writer = WriterOptions(args.max_size, args.format, args.shard_size, args.workers)
    loader = DicomLoader(args.max_size) if args.source in DICOM_SOURCES else None
    index = build_shards(table, schema, args.out, build, writer, loader, command=["cxrlt", *sys.argv[1:]])
    splits = ", ".join(f"{s} {n}" for s, n in index.splits.items())
    print(
        f"{args.out}: {index.num_samples} {index.level} samples in {len(index.shards)} shards ({splits}); "
        f"{index.num_skipped} images skipped (listed in _index.json)"
    )
    return 0
