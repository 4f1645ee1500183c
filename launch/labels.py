"""`cxrlt labels SHARDS --split S --out labels.csv`: a shard split's ground truth as a label CSV."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "labels",
        help="write a shard split's labels as a CSV (dicom_id, study_id, subject_id, ViewPosition, classes)",
        description="The label and id file that `ensemble build`, `evaluate` and `submit write --ids` read.",
    )
    parser.add_argument("shards", type=Path, help="shard set folder")
    parser.add_argument("--split", required=True, help="split to export (e.g. dev, test)")
    parser.add_argument("--out", required=True, type=Path, help="label CSV to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cxrlt.atomic import atomic_path
    from cxrlt.data.labels_table import label_frame

    frame = label_frame(args.shards, args.split)
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=False)
    print(f"wrote {args.out}: {len(frame)} images of split {args.split}")
    return 0
