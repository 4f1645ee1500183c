"""Parameter counts of every registered backbone, head and loss at 224 px (for issue 4's closing note).

Backbones are built at img_size 224 with one input channel (as cxrlt trains them); heads are counted on
top of each backbone's feature width for the 40 CXR-LT 2024 Task 1 classes; the study-fusion row counts
what the default study model adds beyond its backbone, head and (frozen) text encoder.
Run: `.venv/bin/python benchmarks/models.py`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

from cxrlt.labels import CXR_LT_2024_TASK1
from cxrlt.models import (
    BACKBONES,
    HEADS,
    LOSSES,
    BackboneConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    build_head,
    build_loss,
    build_model,
    create_backbone,
    schema_counts,
)

SIZE = 224
NUM_CLASSES = len(CXR_LT_2024_TASK1)


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def backbone_table() -> None:
    heads = HEADS.names()
    columns = ["backbone", "family", "fast tests", "C", "stride", f"map at {SIZE} px", "params"]
    print("| " + " | ".join(columns + [f"+ {h} head" for h in heads]) + " |")
    print("|---" * (7 + len(heads)) + "|")
    for name in BACKBONES:
        spec = BACKBONES.get(name)
        backbone = create_backbone(BackboneConfig(name=name, img_size=SIZE)).eval()
        with torch.no_grad():
            grid = backbone(torch.zeros(1, 1, SIZE, SIZE)).shape[-2:]
        cells = [name, spec.family, "yes" if spec.tiny else "slow", backbone.num_features, backbone.stride]
        cells += [f"{grid[0]}x{grid[1]}", millions(params(backbone))]
        cells += [millions(params(build_head(HeadConfig(name=h), backbone.num_features, NUM_CLASSES))) for h in heads]
        print("| " + " | ".join(map(str, cells)) + " |")


def loss_table() -> None:
    counts, total = schema_counts(CXR_LT_2024_TASK1)
    print("\n| loss | trainable params | per-class weight buffers |")
    print("|---|---|---|")
    for name in LOSSES:
        loss = build_loss(LossConfig(name=name), counts, total)
        buffers = sum(b.numel() for b in loss.buffers())
        print(f"| {name} | {params(loss)} | {buffers} |")


def study_row() -> None:
    cfg = ModelConfig(kind="study")
    cfg.backbone.name = "convnext_small"
    cfg.study.context.indication = True
    cfg.study.context.vitals = "numeric"
    model = build_model(cfg, CXR_LT_2024_TASK1.classes)
    text = params(model.context.text_encoder)
    fusion = params(model) - params(model.encoders) - params(model.head) - text
    print(
        f"\nstudy model (convnext_small, default fusion dim {cfg.study.dim}, {cfg.study.layers} layers, indication + "
        f"numeric vitals): fusion {millions(fusion)}, "
        f"ML-Decoder head on dim {cfg.study.dim} {millions(params(model.head))}, "
        f"frozen text encoder {millions(text)}, total {millions(params(model))}"
    )
    text_cfg = HeadConfig(text_queries=True)
    text_head = build_head(text_cfg, 768, NUM_CLASSES, torch.zeros(NUM_CLASSES, model.context.text_encoder.dim))
    print(f"ml_decoder with text queries on C=768: {millions(params(text_head))} (independent of the class count)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    backbone_table()
    loss_table()
    study_row()
