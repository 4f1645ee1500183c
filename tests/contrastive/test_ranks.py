"""The contrastive loss spans the global batch: two gloo ranks, each holding half of a batch, compute
the loss, gradients and optimizer step of one rank holding all of it (real DeepSpeed engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cxrlt.data.readers import EvalReader, ReaderConfig, make_loader
from cxrlt.data.transforms import TransformConfig
from tests.contrastive.ranks import LOSSES, step
from trainers.distributed import free_port

pytestmark = pytest.mark.timeout(300)
ROWS = 8


def _global_batch(shards: Path) -> dict:
    """8 real training images with their reports; two images of one study sit on different ranks (rows
    0 and 4), so a positive pair crosses ranks."""
    config = ReaderConfig(split="train", batch_size=128, transform=TransformConfig(size=64))
    (batch,) = list(make_loader(EvalReader(shards, config, 0, 1)))
    studies = batch["study_id"]
    shared = next(s for s in studies if studies.count(s) >= 2)
    first, second = [i for i, s in enumerate(studies) if s == shared][:2]
    others = [i for i in range(len(studies)) if studies[i] != shared][: ROWS - 2]
    order = [first, *others[:3], second, *others[3:]]
    return {
        "image": batch["image"][order],
        "labels": batch["labels"][order],
        "findings": [batch["findings"][i] for i in order],
        "impression": [batch["impression"][i] for i in order],
    }


def _run(world: int, batch_file: Path, text_encoder: Path, out: Path) -> None:
    out.mkdir()
    # Forked, not spawned: the children start with this process's imports (tens of seconds saved on a
    # loaded machine); no process group exists here to be inherited.
    args = (world, free_port(), str(batch_file), str(text_encoder), str(out))
    mp.start_processes(step, args=args, nprocs=world, join=True, start_method="fork")


def test_two_ranks_give_the_one_rank_loss_gradients_and_step(report_shards, tiny_text_encoder, tmp_path):
    batch = _global_batch(report_shards)
    assert batch["impression"][0] == batch["impression"][4] and all(batch["impression"])
    torch.save(batch, tmp_path / "batch.pt")
    _run(1, tmp_path / "batch.pt", tiny_text_encoder, tmp_path / "one")
    _run(2, tmp_path / "batch.pt", tiny_text_encoder, tmp_path / "two")
    for loss in LOSSES:
        single = torch.load(tmp_path / "one" / f"{loss}-rank0.pt")
        ranks = [torch.load(tmp_path / "two" / f"{loss}-rank{r}.pt") for r in (0, 1)]
        assert ranks[0]["loss"] == pytest.approx(single["loss"], rel=1e-5), loss
        assert ranks[1]["loss"] == pytest.approx(single["loss"], rel=1e-5), loss
        assert single["grads"].keys() == ranks[0]["grads"].keys()
        assert {"logit_scale", "text_proj.weight", "image_tower.head.fc.weight"} <= single["grads"].keys()
        for name, grad in single["grads"].items():
            for rank in ranks:
                torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"{loss} {name}")
        # AdamW's first step moves each weight by lr * g / (|g| + eps): for a gradient near eps (1e-8) the
        # float noise that the gradient check allows (atol 1e-6) changes that step by up to ~1 % of lr
        # (1e-3). A wrong reduction would move weights by ~lr, a hundred times more.
        for name, weight in single["weights"].items():
            torch.testing.assert_close(ranks[0]["weights"][name], weight, rtol=1e-4, atol=1e-5, msg=f"{loss} {name}")
