"""The DeepSpeed engine around a model: AdamW, warm-up + cosine schedule, precision, ZeRO, clipping.

The optimizer is a client torch AdamW (DeepSpeed's fused Adam needs CUDA and a compiled op, and the
same optimizer on CPU and GPU keeps one code path), over the trainable parameters only: frozen
backbones and unused per-view encoders would otherwise sit in the ZeRO partitions with no gradient.
Norm weights, biases and 1-D parameters, and what a module's `no_weight_decay()` names (timm's
convention: ViT position / class tokens, ML-Decoder queries, study slot embeddings) get no weight decay;
dense weights do, whatever they are called (ML-Decoder's `embed` Linear, ViT's `patch_embed.proj`).
bf16 runs as autocast inside the engine. The schedule is a LambdaLR that DeepSpeed steps once per
optimizer step (after gradient accumulation), so warm-up and cosine count real updates.
"""

from __future__ import annotations

import math
from typing import Any

import deepspeed
import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from trainers.config import DeepSpeedConfig, OptimConfig


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names (fnmatch patterns) that the model's modules declare exempt from decay."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names.update(f"{prefix}.{n}" if prefix else n for n in declared())
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's decay / no-decay split of the trainable parameters, decay group first.

    By parameter kind, not by name: a substring such as "embed" also matches dense projections that
    should decay (ML-Decoder's `head.embed`, ViT's `patch_embed.proj`).
    """
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay_names(model))
    return sorted(groups, key=lambda g: -g["weight_decay"])


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """lr multiplier per optimizer step: linear warm-up from 1/(warmup+1), then cosine to min_ratio."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def use_bf16(cfg: DeepSpeedConfig, device: torch.device) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def trainer_clips(ds: DeepSpeedConfig) -> bool:
    """Whether `train_step` clips gradients itself instead of DeepSpeed.

    Without ZeRO, DeepSpeed's clipping takes one norm kernel per parameter tensor (about 350 launches a
    step for ConvNeXt-S, 13 ms of a 87 ms H100 step); torch's foreach clip_grad_norm_ does the same in a
    handful. With ZeRO 1/2 the averaged gradients live in DeepSpeed's flat partitions, where its own
    clipping is already one pass, so it keeps it.
    """
    return ds.zero_stage == 0


def deepspeed_config(
    optim: OptimConfig, ds: DeepSpeedConfig, micro_batch: int, world_size: int, bf16: bool
) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": micro_batch * optim.grad_accum * world_size,
        "gradient_clipping": 0.0 if trainer_clips(ds) else optim.grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        # bf16 as torch autocast inside the engine's forward, not DeepSpeed's bf16 mode: the weights stay
        # fp32 masters, which the EMA copy and the trained-model files read directly, and gradients are
        # still reduced in bf16 for the Linear/Conv layers.
        "torch_autocast": {"enabled": bf16, "dtype": "bfloat16"},
        # The client AdamW is not on DeepSpeed's list of ZeRO-tested optimizers, but it is plain torch.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_engine(
    model: nn.Module,
    optim: OptimConfig,
    ds: DeepSpeedConfig,
    micro_batch: int,
    world_size: int,
    total_steps: int,
    device: torch.device,
) -> tuple[Any, torch.optim.lr_scheduler.LambdaLR]:
    """(engine, scheduler): the DeepSpeed engine owning `model`, its optimizer and the schedule."""
    groups = parameter_groups(model, optim.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(optim.warmup_steps, total_steps, optim.min_lr_ratio)
    )
    config = deepspeed_config(optim, ds, micro_batch, world_size, use_bf16(ds, device))
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=config
    )
    if world_size == 1 and ds.zero_stage == 0:
        # One rank has nothing to average, yet DeepSpeed would still flatten, all-reduce and copy back
        # every gradient each step (one copy kernel per parameter tensor).
        engine.enable_backward_allreduce = False
    return engine, scheduler
