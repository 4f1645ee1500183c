"""Few-shot adaptation of text-query class embeddings (Team G's mode of CXR-LT 2024 Task 3).

Given a few labelled examples of some classes (positives, and negatives), only those classes' query
embeddings, the rows of a text-query ML-Decoder head's `class_embeddings`, move: the backbone, the
decoder and the shared projections stay bitwise as they were, so the other classes score exactly as
before and no retraining happens. The examples' backbone features are computed once; the embedding
rows are then fitted by Adam on class-balanced binary cross-entropy, with a pull back to the row's
text embedding (`anchor`) because five positives are too few to trust alone.

There is deliberately no per-class bias or scale: the head's classifier is shared by all classes, and
ranking metrics (AP, AUROC) could not see one anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrlt.models.heads import MLDecoderHead


@dataclass
class FewShotConfig:
    """steps / lr: Adam on the adapted rows; anchor: weight of the squared distance to the text row."""

    steps: int = 100
    lr: float = 0.05
    anchor: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.anchor < 0:
            raise ValueError("fewshot needs steps >= 1, lr > 0 and anchor >= 0")


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over classes of (positive mean + negative mean) / 2 of BCE, ignoring targets < 0."""
    losses = []
    for k in range(targets.shape[1]):
        parts = [
            F.binary_cross_entropy_with_logits(logits[mask, k], targets[mask, k])
            for mask in (targets[:, k] == 1, targets[:, k] == 0)
            if mask.any()
        ]
        if parts:
            losses.append(torch.stack(parts).mean())
    if not losses:
        raise ValueError("few-shot adaptation needs at least one labelled example")
    return torch.stack(losses).mean()


def adapt_class_queries(
    head: MLDecoderHead, features: torch.Tensor, targets: torch.Tensor, rows: Sequence[int], cfg: FewShotConfig
) -> torch.Tensor:
    """Fit `head.class_embeddings[rows]` to the examples and store them in the head.

    features: (N, C, H, W) or (N, T, C) backbone features of the examples (no gradient needed).
    targets: (N, len(rows)) float, 1 positive, 0 negative, -1 unknown, column j for class row rows[j].
    Returns the adapted (len(rows), E) embeddings.
    """
    if not head.text_mode:
        raise ValueError("few-shot adaptation needs a text-query head")
    if targets.shape != (len(features), len(rows)):
        raise ValueError(f"targets must be ({len(features)}, {len(rows)}), got {tuple(targets.shape)}")
    index = torch.as_tensor(list(rows), dtype=torch.long, device=head.class_embeddings.device)
    text = head.class_embeddings[index].clone()
    adapted = torch.nn.Parameter(text.clone())
    optimizer = torch.optim.Adam([adapted], lr=cfg.lr)
    frozen = head.class_embeddings
    was_training = head.training
    head.eval()  # no decoder dropout: the examples are the whole signal
    features, targets = features.detach(), targets.to(features)
    try:
        for _ in range(cfg.steps):
            # The buffer is swapped for a differentiable copy with the adapted rows in place.
            head.class_embeddings = frozen.index_copy(0, index, adapted)
            logits = head(features)[:, index]
            loss = balanced_bce(logits, targets) + cfg.anchor * (adapted - text).pow(2).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            # Only `adapted` is asked for, so the head's own parameters never receive gradients.
            (grad,) = torch.autograd.grad(loss, [adapted])
            adapted.grad = grad
            optimizer.step()
    finally:
        head.class_embeddings = frozen
        head.train(was_training)
    result = adapted.detach()
    head.set_class_embeddings(frozen.index_copy(0, index, result))
    return result
