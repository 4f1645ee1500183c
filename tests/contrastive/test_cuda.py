"""The contrastive stage's GPU path: image and text towers under bf16 autocast inside the DeepSpeed engine
(NCCL group), CLIP and SigLIP losses finite and falling on a fixed batch of image-report pairs, fp32 master
weights, and zero-shot scoring (the forward without text) on the GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cxrlt.models.backbones import BackboneConfig
from cxrlt.models.contrastive import ContrastiveConfig
from cxrlt.models.factory import ModelConfig, build_model
from cxrlt.models.text import TextEncoderConfig
from tests.contrastive.conftest import save_tiny_bert
from trainers import distributed
from trainers.config import DeepSpeedConfig, OptimConfig
from trainers.contrastive import ContrastiveCriterion, report_kwargs
from trainers.engine import build_engine, use_bf16

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
REPORTS = [
    "The heart is enlarged. Cardiomegaly.",
    "No acute cardiopulmonary process.",
    "Small left pleural effusion with basilar atelectasis.",
    "Right upper lobe pneumothorax.",
    "Lungs are clear. No effusion.",
    "Stable mild cardiomegaly without edema.",
    "Left lower lobe opacity, pneumonia possible.",
    "Interval removal of the chest tube, no pneumothorax.",
]


def _word_tokenizer_bert(folder: Path) -> Path:
    """A tiny BERT whose word-piece vocabulary is the test reports' words: the GPU machine carries no
    packaged tokenizer, and the tower's code path is the same for any local transformers folder."""
    from transformers import BertTokenizerFast

    words = sorted({w.strip(".,").lower() for text in REPORTS for w in text.split()} | {"no", "cardiomegaly"})
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *words]) + "\n")
    return save_tiny_bert(folder, BertTokenizerFast(vocab_file=str(vocab)), hidden=64)


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_bf16_contrastive_steps_on_cuda_learn_and_score_zero_shot(monkeypatch, tmp_path, loss_name):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    text_encoder = _word_tokenizer_bert(tmp_path)
    ctx = distributed.init()
    try:
        assert ctx.device.type == "cuda" and torch.distributed.get_backend() == "nccl"
        ds = DeepSpeedConfig()
        assert use_bf16(ds, ctx.device)
        cfg = ModelConfig(
            kind="contrastive",
            backbone=BackboneConfig(name="convnext_atto", img_size=64),
            text_encoder=TextEncoderConfig(path=text_encoder, trainable=True, max_length=32),
            contrastive=ContrastiveConfig(embed_dim=32, loss=loss_name),
        )
        torch.manual_seed(0)
        model = build_model(cfg, ["Cardiomegaly", "Pneumothorax"]).to(ctx.device)
        engine, _ = build_engine(model, OptimConfig(lr=3e-4), ds, len(REPORTS), 1, 80, ctx.device)
        criterion = ContrastiveCriterion(loss_name)
        batch = {
            "image": torch.randn(len(REPORTS), 1, 64, 64, device=ctx.device),
            "findings": REPORTS,
            "impression": [""] * len(REPORTS),
        }
        losses = []
        for _ in range(60):
            loss = criterion(engine(batch["image"], **report_kwargs(batch)))
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        # fp32 on the CPU, same batch and seed: the last five average 0.35x (CLIP) and 0.23x (SigLIP) the first.
        assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-5:]) / 5 < 0.6 * losses[0]
        assert all(p.dtype == torch.float32 for p in engine.module.parameters())
        engine.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            scores = engine.module(batch["image"])
        assert scores.shape == (len(REPORTS), 2) and torch.isfinite(scores.float()).all()
    finally:
        distributed.shutdown()
        os.environ.pop("RANK", None)
