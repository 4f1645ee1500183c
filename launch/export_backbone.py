"""`cxrlt export-backbone MODEL --out FILE`: a trained model's image backbone as a backbone checkpoint.

The file holds {state_dict, backbone, provenance} (cxrlt.models.backbones.write_backbone_state), the
layout `model.backbone.checkpoint` reads, so a backbone trained under one label schema starts members of
any other schema, stage or resolution (ViT positions are resampled on load): the pretraining chain
NIH / CheXpert / VinDr / BRAX -> MIMIC-CXR-LT. EMA weights are taken when the file has them.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-backbone",
        help="write a trained model's image backbone as a checkpoint any schema's model.backbone.checkpoint reads",
    )
    parser.add_argument("model", type=Path, help="trained-model file (a run's best.pt / last.pt)")
    parser.add_argument("--out", type=Path, required=True, help="backbone checkpoint to write (.pt)")
    parser.add_argument("--no-ema", action="store_true", help="take the raw weights even when the file has EMA ones")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cxrlt.models.backbones import write_backbone_state
    from cxrlt.models.crossschema import saved_backbone_state
    from cxrlt.models.saved import load_model

    saved = load_model(args.model)
    if args.no_ema:
        saved = replace(saved, ema_state_dict=None)
    state = saved_backbone_state(saved)
    backbone = saved.model_config.backbone
    provenance = {
        "model": str(args.model),
        "kind": saved.kind,
        "schema": saved.schema,
        "classes": list(saved.classes),
        "img_size": backbone.img_size,
        "in_chans": backbone.in_chans,
        "ema": saved.ema_state_dict is not None,
        "step": saved.step,
        "mlflow_run_id": saved.mlflow_run_id or "",
    }
    write_backbone_state(state, backbone.name, args.out, provenance)
    print(
        f"{args.out}: {backbone.name} backbone ({len(state)} tensors) of a {saved.kind} model trained on "
        f"{saved.schema}; use it as model.backbone.checkpoint with model.backbone.name = {backbone.name!r}"
    )
    return 0
