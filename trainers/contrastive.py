"""The contrastive stage's training objective: embeddings gathered over ranks, then CLIP or SigLIP.

Everything else of the stage is the ordinary member (trainers.loop: DeepSpeed engine, checkpoints,
exact resume, stop requests, MLflow, validation); only the criterion and the report text fed to the
model differ. Validation scores the dev split zero-shot over the shards' classes (the model's forward
without text, cxrlt.models.contrastive), so `dev/mAP` is the zero-shot mAP CheXzero selected
checkpoints by, and `best.pt` is a model `cxrlt predict` scores any class names with.

Gradients across ranks. Each rank gathers every rank's image and text embeddings (`gather_with_grad`)
and computes the loss of the whole global batch, so every rank's loss is the same number, the one a
single rank would compute on that batch. The backward of the gather sums, over ranks, the gradient
each rank's loss sends to a rank's own rows (W equal terms); DeepSpeed then averages parameter
gradients over the W ranks, so each parameter receives exactly the single-rank gradient of the global
batch. Every rank must hold the same number of rows, which the training reader guarantees (full
batches of `data.batch_size` on every rank).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cxrlt.models.contrastive import ContrastiveOutput, contrastive_loss


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward is the sum over ranks of the gradient of this rank's rows.

    Written here rather than torch.distributed.nn.all_gather, whose backward needs reduce_scatter or
    all_to_all: an all_reduce works on every backend, gloo included.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = dist.get_rank() * ctx.rows
        return total[start : start + ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order, differentiable with respect to this rank's rows."""
    return tensor if _world() == 1 else _GatherWithGrad.apply(tensor)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order (no gradient)."""
    if _world() == 1:
        return tensor
    sent = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor  # gloo has no bool collectives
    parts = [torch.empty_like(sent) for _ in range(_world())]
    dist.all_gather(parts, sent.contiguous())
    return torch.cat(parts).to(tensor.dtype)


class ContrastiveCriterion(nn.Module):
    """(model output, labels) -> the global-batch loss. The labels are not used: the report is the
    supervision (the trainer's targets argument is kept so the stage shares the member's train step)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, output: ContrastiveOutput, targets: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(output, ContrastiveOutput):
            raise TypeError("the contrastive criterion needs the model's training output (report text given)")
        return contrastive_loss(
            self.kind,
            gather_with_grad(output.image),
            gather_with_grad(output.text),
            gather(output.ids),
            gather(output.valid),
            output.scale,
            output.bias,
        )


def report_kwargs(batch: dict[str, Any]) -> dict[str, list[str]]:
    """The report text of a reader batch (cxrlt.data.decoding), as the contrastive model's keywords."""
    return {"findings": list(batch["findings"]), "impression": list(batch["impression"])}
