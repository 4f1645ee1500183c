"""One contrastive train step on a rank of a gloo group, for the rank-equivalence test (run by
torch.multiprocessing, so it lives in an importable module)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cxrlt.models.backbones import BackboneConfig
from cxrlt.models.contrastive import ContrastiveConfig
from cxrlt.models.factory import ModelConfig, build_model
from cxrlt.models.text import TextEncoderConfig
from trainers import distributed
from trainers.config import DeepSpeedConfig, OptimConfig
from trainers.contrastive import ContrastiveCriterion, report_kwargs
from trainers.engine import build_engine

LOSSES = ("clip", "siglip")


def step(rank: int, world: int, port: int, batch_file: str, text_encoder: str, out: str) -> None:
    """Rank `rank` of `world` takes its consecutive share of the global batch in `batch_file`, runs one
    optimizer step per loss through the real DeepSpeed engine and writes its loss, the averaged
    gradients and the stepped weights to `out/<loss>-rank<rank>.pt`."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    ctx = distributed.init("gloo")
    batch = torch.load(batch_file, weights_only=False)
    rows = len(batch["image"]) // world
    mine = slice(rank * rows, (rank + 1) * rows)
    part = {key: value[mine] for key, value in batch.items()}
    for loss_name in LOSSES:
        cfg = ModelConfig(
            kind="contrastive",
            backbone=BackboneConfig("convnext_atto"),
            text_encoder=TextEncoderConfig(path=Path(text_encoder), trainable=True, max_length=32),
            contrastive=ContrastiveConfig(embed_dim=16, loss=loss_name),
        )
        torch.manual_seed(0)
        model = build_model(cfg, ["Cardiomegaly"])
        engine, _ = build_engine(
            model, OptimConfig(lr=1e-3), DeepSpeedConfig(backend="gloo"), rows, world, 10, ctx.device
        )
        # Dropout off: each rank draws its own masks, which no single rank could reproduce; the test is
        # about the arithmetic of gathering and averaging.
        engine.eval()
        output = engine(part["image"], **report_kwargs(part))
        loss = ContrastiveCriterion(loss_name)(output, part["labels"])
        engine.backward(loss)
        grads = {n: p.grad.detach().clone() for n, p in engine.module.named_parameters() if p.grad is not None}
        engine.step()
        weights = {n: v.detach().clone() for n, v in engine.module.state_dict().items()}
        torch.save({"loss": loss.item(), "grads": grads, "weights": weights}, Path(out) / f"{loss_name}-rank{rank}.pt")
    distributed.shutdown()
