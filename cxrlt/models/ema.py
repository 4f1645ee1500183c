"""Exponential moving average of model weights, through timm's ModelEmaV3.

The trainer builds one from config, calls `ema.update(model, step=global_step)` after each optimizer
step and evaluates / saves `ema.module`; its state dict is part of every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.utils import ModelEmaV3
from torch import nn


@dataclass
class EmaConfig:
    """decay: the long-run decay. warmup: ramp the decay as 1 - (1 + step / warmup_gamma) ** -warmup_power
    (capped at `decay`) so early, still-random weights are forgotten quickly. update_after_step: steps
    during which the EMA simply copies the model."""

    enabled: bool = False
    decay: float = 0.9998
    warmup: bool = True
    warmup_gamma: float = 1.0
    warmup_power: float = 0.75
    update_after_step: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay}")
        if self.update_after_step < 0 or self.warmup_gamma <= 0 or self.warmup_power <= 0:
            raise ValueError("update_after_step must be >= 0; warmup_gamma and warmup_power must be positive")


def create_ema(model: nn.Module, cfg: EmaConfig) -> ModelEmaV3 | None:
    """A ModelEmaV3 copy of `model` (on its device and dtype), or None when EMA is disabled.

    Input:  the model to track, after it is moved to its device and before wrapping (DeepSpeed / DDP).
    Output: ModelEmaV3 whose `.module` is the averaged model, in eval mode.
    """
    if not cfg.enabled:
        return None
    return ModelEmaV3(
        model,
        decay=cfg.decay,
        update_after_step=cfg.update_after_step,
        use_warmup=cfg.warmup,
        warmup_gamma=cfg.warmup_gamma,
        warmup_power=cfg.warmup_power,
    )
