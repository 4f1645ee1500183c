"""`cxrlt submit ...`: CodaLab submission files. `validate` checks one against a task and id list;
`write` makes one from a prediction file and validates it before it is put in place."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

EXIT_INVALID = 1
SHOWN_PER_KIND = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("submit", help="CodaLab submission files")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser(
        "validate",
        help="check a submission CSV or zip; exit status 1 when it has faults",
        description="Reports every fault with its line and column: header, class columns, ids, values.",
    )
    validate.add_argument("--task", required=True, choices=["t1", "t2", "t3"])
    validate.add_argument("--ids", required=True, type=Path, help="the development/test CSV (dicom_id column)")
    validate.add_argument("submission", type=Path, help="submission .csv or .zip")
    validate.set_defaults(run=run_validate)
    write = actions.add_parser(
        "write",
        help="write a CodaLab CSV or zip from a prediction file (e.g. an applied ensemble)",
        description="Rows follow the id CSV; the file is validated before it replaces OUT.",
    )
    write.add_argument("--task", required=True, choices=["t1", "t2", "t3"])
    write.add_argument("--ids", required=True, type=Path, help="the development/test CSV (dicom_id column)")
    write.add_argument(
        "--predictions",
        required=True,
        nargs="+",
        type=Path,
        help="prediction file(s) (image_id + classes); several are averaged per class",
    )
    write.add_argument("--out", required=True, type=Path, help="submission .zip or .csv")
    write.set_defaults(run=run_write)


def run_validate(args: argparse.Namespace) -> int:
    from cxrlt.submission import expected_ids, validate_submission

    report = validate_submission(args.submission, args.task, expected_ids(args.ids))
    by_kind = defaultdict(list)
    for fault in report.faults:
        by_kind[fault.kind].append(fault)
    for kind, faults in by_kind.items():
        for fault in faults[:SHOWN_PER_KIND]:
            print(fault)
        # report.counts: every fault of the kind, also those past the ones the report keeps.
        if report.counts[kind] > SHOWN_PER_KIND:
            print(f"[{kind}] ... and {report.counts[kind] - SHOWN_PER_KIND} more")
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.ok:
        print(f"{args.submission}: valid {args.task} submission, {report.n_rows} rows")
        return 0
    counts = ", ".join(f"{report.counts[k]} {k}" for k in by_kind)
    print(f"{args.submission}: INVALID for {args.task}: {report.counts.total()} faults ({counts})")
    return EXIT_INVALID


def run_write(args: argparse.Namespace) -> int:
    from ensembles.submission import write_submission

    report = write_submission(args.predictions, args.task, args.ids, args.out)
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"wrote {args.out}: valid {args.task} submission, {report.n_rows} rows")
    return 0
