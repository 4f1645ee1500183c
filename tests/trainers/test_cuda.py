"""The GPU path of the trainer step: NCCL group, bf16 autocast inside the DeepSpeed engine, fp32 master
weights, own gradient clipping, and the gloo control group agreeing on stop requests."""

from __future__ import annotations

import os

import pytest
import torch

from cxrlt.models.backbones import BackboneConfig
from cxrlt.models.factory import ModelConfig, build_model
from cxrlt.models.heads import HeadConfig
from cxrlt.models.losses import LossConfig, build_loss
from trainers import distributed
from trainers.config import DeepSpeedConfig, OptimConfig
from trainers.engine import build_engine, trainer_clips, use_bf16
from trainers.loop import train_step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_bf16_engine_step_on_cuda_learns_and_keeps_fp32_weights(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    ctx = distributed.init()
    try:
        assert ctx.device.type == "cuda" and torch.distributed.get_backend() == "nccl" and ctx.control is not None
        ds = DeepSpeedConfig()
        assert use_bf16(ds, ctx.device)
        torch.manual_seed(0)
        cfg = ModelConfig(backbone=BackboneConfig(name="convnext_atto", img_size=64), head=HeadConfig(name="linear"))
        model = build_model(cfg, [f"c{i}" for i in range(5)]).to(ctx.device)
        engine, _ = build_engine(model, OptimConfig(lr=1e-3), ds, 8, 1, 50, ctx.device)
        criterion = build_loss(LossConfig(name="asl")).to(ctx.device)
        batch = {"image": torch.randn(8, 1, 64, 64), "labels": (torch.rand(8, 5) < 0.3).float()}
        before = next(engine.module.parameters()).detach().clone()
        losses = [
            train_step(engine, criterion, batch, "image", ctx.device, clip=1.0 if trainer_clips(ds) else 0.0)[0].item()
            for _ in range(20)
        ]
        assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
        weights = next(engine.module.parameters())
        assert weights.dtype == torch.float32 and not torch.equal(weights, before)
        assert distributed.any_rank(True, ctx) and not distributed.any_rank(False, ctx)
    finally:
        distributed.shutdown()
        os.environ.pop("RANK", None)
