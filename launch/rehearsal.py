"""`cxrlt rehearsal make --out DIR`: a MIMIC-CXR-LT-shaped rehearsal tree from the embedded NIH images."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rehearsal",
        help="generate the MIMIC-CXR-LT-shaped rehearsal set (real NIH images, real IU reports)",
        description="A tree with the exact layout, names and formats of MIMIC-CXR-JPG + MIMIC-CXR reports + "
        "the CXR-LT 2024 CSVs + MIMIC-IV-ED, built from the 621 embedded NIH images, to rehearse the real recipe.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = actions.add_parser("make", help="write the rehearsal tree (reused when DIR holds one with the same options)")
    make.add_argument("--out", required=True, type=Path, help="folder to create (written beside, then renamed)")
    make.add_argument("--seed", type=int, default=0, help="seed for every invented value (default 0)")
    make.add_argument(
        "--images", type=int, help="use the first N of the 621 images after a seeded shuffle (default: all)"
    )
    make.add_argument(
        "--external", type=int, help="images held out in NIH's layout (default: 100 of 621, scaled with --images)"
    )
    make.add_argument(
        "--public",
        type=int,
        help="images held out in VinDr-CXR's and CheXpert's layouts, half each (default: 50 of 621, scaled)",
    )
    make.add_argument(
        "--reports-archive", help="IU X-ray NLMCXR_reports.tgz (default: shared/data/reports/ beside the checkout)"
    )
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cxrlt.data.rehearsal import DEFAULT_REPORTS, RehearsalOptions, make_rehearsal

    options = RehearsalOptions(
        args.seed, args.images, args.external, args.reports_archive or DEFAULT_REPORTS, args.public
    )
    manifest, reused = make_rehearsal(args.out, options, progress=not args.quiet)
    if reused:
        print(f"{args.out}: reusing the rehearsal tree made with the same options ({manifest['options']})")
        return 0
    images = ", ".join(f"{k} {v}" for k, v in manifest["images"].items())
    studies = ", ".join(f"{k} {v}" for k, v in manifest["studies"].items())
    print(f"wrote {args.out}: images {images}; studies {studies}")
    print(f"classes without positives: {', '.join(manifest['classes_without_positives']) or 'none'}")
    return 0
