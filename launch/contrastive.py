"""`cxrlt contrastive export MODEL --out DIR`: a contrastive model's towers as member starting points.

Training is `cxrlt train` with stage.name = "contrastive"; zero-shot scoring is `cxrlt predict
--classes ... --descriptions ...`. This command hands the towers to classification members
(cxrlt.models.towers)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("contrastive", help="export a contrastive model's image and text towers")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="write image_backbone.pth (model.backbone.checkpoint) and text_encoder/ (model.text_encoder.path)",
        description="Writes the image backbone, the fine-tuned text encoder folder and transfer.toml, the "
        "--set keys that start any classification member (any schema) from them.",
    )
    export.add_argument("model", type=Path, help="trained-model file of a contrastive run (best.pt)")
    export.add_argument("--out", required=True, type=Path, help="folder to write")
    export.add_argument("--no-ema", action="store_true", help="export the raw weights even when EMA weights exist")
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from cxrlt.models.saved import load_model
    from cxrlt.models.towers import export_towers

    files = export_towers(load_model(args.model), args.out, use_ema=not args.no_ema)
    print(f"wrote {files.backbone} and {files.text_encoder}")
    for key, value in files.overrides.items():
        print(f"  --set {key}={value}")
    return 0
