"""Multi-label losses for long-tailed training, all masking unknown labels.

Targets are (B, K) floats: 1 / 0 (or soft values in between) for known labels and -1 (UNKNOWN) where a
source never annotated the class; unknown entries get no loss and no gradient. Every loss is the mean
over the known entries of the batch. Elementwise terms come from library code where it exists:
torch's BCE-with-logits, torchvision's sigmoid focal loss and timm's AsymmetricLossMultiLabel; class
weights from counts come from timm's compute_class_weights. Every coefficient is a LossConfig value so
the tuner can search it (`--set loss.gamma_neg=3`).

Registered: bce, weighted_bce (pos_weight_c = (negatives_c / positives_c) ** pos_weight_power),
focal, asl, weighted_asl (ASL times w_c proportional to (N / positives_c) ** class_weight_power, mean 1,
the CXR-LT winners' loss).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.loss import AsymmetricLossMultiLabel, compute_class_weights
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from cxrlt.labels import Schema
from cxrlt.models.registry import Registry

# Per-class positive counts; float for the effective counts of several pooled shard sets
# (cxrlt.data.multisource.training_counts), None for a class without one.
ClassCounts = Sequence[float | None]
LossBuilder = Callable[["LossConfig", "ClassCounts | None", "int | None"], nn.Module]
LOSSES: Registry[LossBuilder] = Registry("loss")


@dataclass
class LossConfig:
    """Loss choice and coefficients; keys a loss does not use are ignored by it.

    focal_alpha < 0 disables focal class balancing. max_weight caps count-derived weights (None: no cap).
    """

    name: str = "weighted_asl"
    pos_weight_power: float = 1.0
    class_weight_power: float = 1.0
    max_weight: float | None = None
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    eps: float = 1e-8

    def __post_init__(self) -> None:
        LOSSES.get(self.name)
        if min(self.focal_gamma, self.gamma_neg, self.gamma_pos, self.pos_weight_power, self.class_weight_power) < 0:
            raise ValueError("focusing parameters and weight powers must be non-negative")
        if not 0.0 <= self.clip < 1.0:
            raise ValueError(f"clip must be in [0, 1), got {self.clip}")
        if self.focal_alpha > 1.0:
            raise ValueError(f"focal_alpha must be <= 1 (negative disables it), got {self.focal_alpha}")
        if self.max_weight is not None and self.max_weight <= 0:
            raise ValueError(f"max_weight must be positive, got {self.max_weight}")


def schema_counts(schema: Schema) -> tuple[list[int | None], int | None]:
    """Per-class training counts in schema order (None for classes without one) and the total."""
    counts = schema.counts or {}
    return [counts.get(c) for c in schema.classes], schema.total


def weights_from_counts(
    counts: ClassCounts, total: int, method: str, power: float, max_weight: float | None
) -> torch.Tensor:
    """timm's count-derived weights ('neg_pos' or 'inv_freq'); classes without a count get 1.

    A class without a count (None: a zero-shot class, or one the training split never annotates) has
    only unknown labels in training, so its weight never touches a gradient; 1 keeps it neutral instead
    of inventing a frequency. A class annotated without a positive (count 0) is computed apart and gets
    the weight of the rarest class with positives: timm would clamp its count to 1, giving it the largest
    weight of all, and the mean-1 normalisation of 'inv_freq' would then shrink every other class.
    """
    observed = [i for i, c in enumerate(counts) if c is not None and c > 0]
    observed_counts = [c for c in counts if c is not None and c > 0]  # counts[i] for i in observed
    absent = [i for i, c in enumerate(counts) if c == 0]
    weights = torch.ones(len(counts))
    if observed:
        _, computed = compute_class_weights(observed_counts, total, method=method, power=power, max_weight=max_weight)
        weights[observed] = computed
        weights[absent] = computed[torch.tensor(observed_counts).argmin()]
    return weights


class MaskedMultiLabelLoss(nn.Module, abc.ABC):
    """Mean of an elementwise loss over the known (target >= 0) entries.

    Input:  logits (B, K) float (any float dtype; computed in float32); targets (B, K) float in [0, 1]
            or -1 for unknown.
    Output: scalar float32 loss; 0 (with a zero gradient) when nothing is known.
    Subclasses implement `elementwise(logits, targets) -> (B, K)` on targets with unknowns set to 0.
    """

    @abc.abstractmethod
    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The unreduced (B, K) loss for float32 logits and targets in [0, 1]."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
        known = targets >= 0
        # Unknown targets are replaced before the loss sees them: -1 inside a focusing power or a log
        # would give NaN, and NaN * 0 is still NaN in the gradient.
        safe = torch.where(known, targets, torch.zeros_like(targets)).float()
        per_entry = self.elementwise(logits.float(), safe)
        return torch.where(known, per_entry, torch.zeros_like(per_entry)).sum() / known.sum().clamp(min=1)


class BCELoss(MaskedMultiLabelLoss):
    """Binary cross-entropy with an optional per-class positive weight (K,)."""

    pos_weight: torch.Tensor | None  # (K,) buffer

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight, reduction="none")


class FocalLoss(MaskedMultiLabelLoss):
    """Sigmoid focal loss (Lin et al.): alpha_t (1 - p_t) ** gamma * BCE; alpha < 0 disables alpha_t."""

    def __init__(self, gamma: float, alpha: float) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="none")


class AsymmetricLoss(MaskedMultiLabelLoss):
    """Asymmetric loss (Ridnik et al.), timm's implementation, with optional per-class weights (K,)."""

    def __init__(
        self, gamma_neg: float, gamma_pos: float, clip: float, eps: float, class_weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        # The focusing weights carry no gradient, as in the ASL authors' training script: with a
        # focusing power below 1, d/dp of p ** gamma is infinite where clipping makes p exactly 0 (a
        # confident negative), and infinity times the zero loss there is a NaN gradient.
        self.asl = AsymmetricLossMultiLabel(
            gamma_neg=gamma_neg,
            gamma_pos=gamma_pos,
            clip=clip,
            eps=eps,
            reduction="none",
            weight=class_weight,
            disable_torch_grad_focal_loss=True,
        )

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.asl(logits, targets)


def _require_counts(name: str, counts: ClassCounts | None, total: int | None) -> tuple[ClassCounts, int]:
    if counts is None or total is None:
        raise ValueError(f"loss {name!r} derives class weights from training counts; none were given")
    return counts, total


@LOSSES.decorator("bce")
def _bce(cfg: LossConfig, counts: ClassCounts | None, total: int | None) -> BCELoss:
    return BCELoss()


@LOSSES.decorator("weighted_bce")
def _weighted_bce(cfg: LossConfig, counts: ClassCounts | None, total: int | None) -> BCELoss:
    counts, total = _require_counts(cfg.name, counts, total)
    return BCELoss(weights_from_counts(counts, total, "neg_pos", cfg.pos_weight_power, cfg.max_weight))


@LOSSES.decorator("focal")
def _focal(cfg: LossConfig, counts: ClassCounts | None, total: int | None) -> FocalLoss:
    return FocalLoss(cfg.focal_gamma, cfg.focal_alpha)


@LOSSES.decorator("asl")
def _asl(cfg: LossConfig, counts: ClassCounts | None, total: int | None) -> AsymmetricLoss:
    return AsymmetricLoss(cfg.gamma_neg, cfg.gamma_pos, cfg.clip, cfg.eps)


@LOSSES.decorator("weighted_asl")
def _weighted_asl(cfg: LossConfig, counts: ClassCounts | None, total: int | None) -> AsymmetricLoss:
    counts, total = _require_counts(cfg.name, counts, total)
    weights = weights_from_counts(counts, total, "inv_freq", cfg.class_weight_power, cfg.max_weight)
    return AsymmetricLoss(cfg.gamma_neg, cfg.gamma_pos, cfg.clip, cfg.eps, class_weight=weights)


def build_loss(cfg: LossConfig, counts: ClassCounts | None = None, total: int | None = None) -> nn.Module:
    """The configured loss; weighted losses need per-class training `counts` (schema order) and `total`."""
    return LOSSES.get(cfg.name)(cfg, counts, total)
