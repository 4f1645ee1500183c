"""One process, several process groups in turn: `distributed.shutdown` leaves nothing behind that the next
group's DeepSpeed engine trips over (benchmarks and the CUDA tests build an engine per group)."""

from __future__ import annotations

import os

import torch

from cxrlt.models.backbones import BackboneConfig
from cxrlt.models.factory import ModelConfig, build_model
from cxrlt.models.heads import HeadConfig
from trainers import distributed
from trainers.config import DeepSpeedConfig, OptimConfig
from trainers.engine import build_engine


def test_an_engine_trains_in_a_group_formed_after_an_earlier_one_was_shut_down(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    cfg = ModelConfig(backbone=BackboneConfig(name="convnext_atto", img_size=32), head=HeadConfig(name="linear"))
    try:
        for _ in range(2):
            ctx = distributed.init()
            model = build_model(cfg, ["a", "b"]).to(ctx.device)
            engine, _ = build_engine(model, OptimConfig(), DeepSpeedConfig(), 2, 1, 5, ctx.device)
            engine.backward(engine(torch.randn(2, 1, 32, 32, device=ctx.device)).float().sum())
            engine.step()
            distributed.shutdown()
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                os.environ.pop(key, None)
    finally:
        distributed.shutdown()
