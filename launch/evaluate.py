"""`cxrlt evaluate`: score a prediction CSV against a label CSV with the CXR-LT metrics."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="CXR-LT metrics of a prediction CSV against a label CSV",
        description="Columns are matched by class name, rows by id (dicom_id, else image_id; a prediction "
        "file's image_id pairs with a label file's dicom_id).",
    )
    parser.add_argument("--predictions", required=True, type=Path, help="CSV: id column + one column per class")
    parser.add_argument("--labels", required=True, type=Path, help="CSV: id column + 1/0/-1/blank per class")
    parser.add_argument("--schema", required=True, help="label schema (see `cxrlt schemas`)")
    parser.add_argument(
        "--groups-from",
        default="schema",
        metavar="schema|counts|TRAIN.csv",
        help="head/medium/tail groups: the schema's own (hand split where it has one), its training "
        "counts, or counts from a training label CSV (default: schema)",
    )
    parser.add_argument("--id-column", help="id column shared by both files (default: dicom_id or image_id)")
    parser.add_argument("--critical", help="comma-separated findings whose false-negative rate is reported")
    parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold for F1 and FNR")
    parser.add_argument("--json", type=Path, help="also write the full result as JSON here")
    parser.set_defaults(run=run)


def _groups(spec: str, schema) -> dict[str, str]:
    from cxrlt.errors import InputError
    from cxrlt.labels import frequency_groups
    from cxrlt.tables import class_counts

    if spec == "schema":
        return schema.groups()
    if spec == "counts":
        if schema.counts is None or schema.total is None:
            raise InputError(f"schema {schema.name} has no training counts; pass --groups-from TRAIN.csv")
        return frequency_groups(schema.counts, schema.total)
    counts, total = class_counts(spec, schema.classes)
    if total == 0:
        raise InputError(f"{spec}: no rows to count classes from")
    return frequency_groups(counts, total)


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from cxrlt.atomic import write_text_atomic
    from cxrlt.errors import InputError
    from cxrlt.labels import get_schema
    from cxrlt.metrics import DEFAULT_CRITICAL, evaluate
    from cxrlt.tables import align_predictions
    from launch.console import make_console

    try:
        schema = get_schema(args.schema)
    except KeyError as e:
        raise InputError(e.args[0]) from None
    groups = _groups(args.groups_from, schema)
    critical = DEFAULT_CRITICAL if args.critical is None else [c.strip() for c in args.critical.split(",")]
    unknown_critical = [c for c in critical if c not in schema.classes]
    if args.critical is not None and unknown_critical:
        raise InputError(f"--critical: {unknown_critical} not in schema {schema.name}")
    tables = align_predictions(args.predictions, args.labels, schema.classes, args.id_column)
    result = evaluate(tables.labels, tables.scores, schema.classes, groups, critical, args.threshold)

    console = make_console()
    summary = Table(title=f"CXR-LT evaluation: {schema.name}, {result.n_samples} samples", show_header=True)
    for column in ("mAP", "mAUROC", f"mF1@{args.threshold:g}", "mECE", *result.group_mAP, "group avg"):
        summary.add_column(column, justify="right")
    summary.add_row(
        *(_fmt(v) for v in (result.mAP, result.mAUROC, result.mF1, result.mECE)),
        *(_fmt(v) for v in result.group_mAP.values()),
        _fmt(result.group_average_mAP),
    )
    per_class = Table("class", "group", "n", "pos", "prev", "AP", "AUROC", "F1", "ECE", "FNR", title="per class")
    for row in result.per_class:
        per_class.add_row(
            row.name,
            row.group or "-",
            str(row.n),
            str(row.n_positive),
            _fmt(row.prevalence),
            _fmt(row.ap),
            _fmt(row.auroc),
            _fmt(row.f1),
            _fmt(row.ece),
            _fmt(row.fnr),
        )
    console.print(summary)
    console.print(per_class)
    if result.critical_fnr:
        console.print(
            f"false-negative rate at {args.threshold:g} on critical findings: "
            + ", ".join(f"{name} {_fmt(v)}" for name, v in result.critical_fnr.items())
        )
    if result.excluded:
        console.print(
            "excluded from the means (AP/AUROC undefined): "
            + "; ".join(f"{name} ({why})" for name, why in result.excluded.items())
        )
    if tables.ignored_prediction_ids:
        console.print(f"ignored {tables.ignored_prediction_ids} predictions for ids without labels")
    if args.json:
        payload = {
            "predictions": str(args.predictions),
            "labels": str(args.labels),
            "schema": schema.name,
            "id_column": tables.id_column,
            "prediction_id_column": tables.prediction_id_column,
            "groups_from": args.groups_from,
            "ignored_prediction_ids": tables.ignored_prediction_ids,
            **result.to_dict(),
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0
