"""Trainer benchmarks: step-time overhead against a bare PyTorch loop, and GPU training throughput.

    python -m benchmarks.trainer overhead [--backbone convnext_atto --size 64 --batch 16 --steps 40]
    python -m benchmarks.trainer throughput [--models convnext_small,efficientnetv2_s,vit_base_patch16_224]

overhead: the same model weights, the same batches (real starter images decoded once into memory)
and the same loss, trained (a) by a bare loop: forward, backward, clip, AdamW, schedule; (b) by the
trainer's own `train_step` on its DeepSpeed engine plus the per-step stop-request all-reduce. Both run
in one process (a group of one), alternating blocks so drift on a shared machine hits both alike.
Target: (b) / (a) <= 1.10. bf16 autocast on CUDA, fp32 on CPU.

throughput: training images/s of the trainer step for the CXR-LT backbones at 224 and 512 px (3
channels, random inputs as timm's benchmark uses), next to a bare AMP loop on the same GPU and timm's
published RTX 3090 AMP training figure (timm results/benchmark-train-amp-nchw-pt112-cu113-
rtx3090.csv), which is the reference timm itself publishes for these architectures.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.readers import ReaderConfig, TrainReader, make_loader
from cxrlt.data.sources.starter import read_starter
from cxrlt.data.transforms import TransformConfig
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import get_schema
from cxrlt.models.backbones import BackboneConfig
from cxrlt.models.factory import ModelConfig, build_model
from cxrlt.models.heads import HeadConfig
from cxrlt.models.losses import LossConfig, build_loss
from trainers import distributed
from trainers.config import DeepSpeedConfig, OptimConfig
from trainers.engine import build_engine, parameter_groups, trainer_clips, use_bf16, warmup_cosine
from trainers.loop import train_step

# timm's published training throughput, results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv:
# (samples/s, image size, batch) on an RTX 3090, AMP, PyTorch 1.12. efficientnetv2_s is listed at 288 px.
TIMM_RTX3090_TRAIN = {
    "convnext_small": (489.81, 224, 192),
    "efficientnetv2_s": (433.27, 288, 128),
    "vit_base_patch16_224": (390.86, 224, 192),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model: torch.nn.Module, criterion, optim: OptimConfig, total: int, bf16: bool, device) -> Callable:
    optimizer = torch.optim.AdamW(parameter_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(optim.warmup_steps, total, optim.min_lr_ratio)
    )

    def step(batch: dict) -> torch.Tensor:
        images = batch["image"].to(device, non_blocking=True)
        targets = batch["labels"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = criterion(logits, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def trainer_loop(model: torch.nn.Module, criterion, optim: OptimConfig, total: int, ctx) -> Callable:
    ds = DeepSpeedConfig()
    engine, _ = build_engine(model, optim, ds, micro_batch=1, world_size=1, total_steps=total, device=ctx.device)
    clip = optim.grad_clip if trainer_clips(ds) else 0.0

    def step(batch: dict) -> torch.Tensor:
        loss, boundary = train_step(engine, criterion, batch, "image", ctx.device, clip=clip)
        if boundary:
            distributed.any_rank(False, ctx)  # the stop-request agreement every step pays
        return loss

    return step


def time_steps(step: Callable, batches: list[dict], device: torch.device) -> float:
    """Seconds per step over `batches` (after the caller's warm-up)."""
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    _sync(device)
    return (time.perf_counter() - start) / len(batches)


def real_batches(size: int, batch_size: int, count: int) -> list[dict]:
    """`count` augmented training batches of the embedded NIH starter, decoded once."""
    with tempfile.TemporaryDirectory() as folder:
        schema = get_schema("nih-14")
        build_shards(read_starter(schema), schema, folder, BuildOptions(), WriterOptions(max_size=size))
        config = ReaderConfig(
            batch_size=batch_size, steps_per_epoch=count, shuffle_buffer=256, transform=TransformConfig(size=size)
        )
        return list(make_loader(TrainReader(folder, config, rank=0, world_size=1)))


def overhead(args: argparse.Namespace) -> None:
    ctx = distributed.init()
    batches = real_batches(args.size, args.batch, args.steps)
    schema = get_schema("nih-14")
    cfg = ModelConfig(backbone=BackboneConfig(name=args.backbone, img_size=args.size), head=HeadConfig(name=args.head))
    torch.manual_seed(0)
    reference = build_model(cfg, schema.classes)
    criterion = build_loss(LossConfig(name="asl")).to(ctx.device)
    optim = OptimConfig(lr=1e-4, warmup_steps=5)
    bf16 = use_bf16(DeepSpeedConfig(), ctx.device)
    total = args.steps * (args.rounds + 1) * 2
    loops = {
        "bare": bare_loop(copy.deepcopy(reference).to(ctx.device), criterion, optim, total, bf16, ctx.device),
        "cxrlt": trainer_loop(copy.deepcopy(reference).to(ctx.device), criterion, optim, total, ctx),
    }
    times: dict[str, list[float]] = {name: [] for name in loops}
    for name, step in loops.items():  # warm-up: allocator, autotuning, first DeepSpeed step
        time_steps(step, batches[:5], ctx.device)
    for _ in range(args.rounds):
        for name, step in loops.items():
            times[name].append(time_steps(step, batches, ctx.device))
    bare, ours = statistics.median(times["bare"]), statistics.median(times["cxrlt"])
    print(
        f"device {ctx.device} ({torch.cuda.get_device_name() if ctx.device.type == 'cuda' else os.cpu_count()} "
        f"{'GPU' if ctx.device.type == 'cuda' else 'CPUs'}), threads {torch.get_num_threads()}, bf16 {bf16}"
    )
    print(
        f"{args.backbone} {args.head} head, {args.size} px, batch {args.batch}, {args.steps} steps x {args.rounds} rounds"
    )
    print(
        f"bare PyTorch loop : {bare * 1000:8.2f} ms/step  (rounds: {', '.join(f'{t * 1000:.1f}' for t in times['bare'])})"
    )
    print(
        f"cxrlt train_step  : {ours * 1000:8.2f} ms/step  (rounds: {', '.join(f'{t * 1000:.1f}' for t in times['cxrlt'])})"
    )
    print(f"ratio cxrlt / bare: {ours / bare:.3f}  (target <= 1.10)")


def throughput(args: argparse.Namespace) -> None:
    ctx = distributed.init()
    if ctx.device.type != "cuda":
        raise SystemExit("throughput needs a CUDA device")
    optim = OptimConfig(lr=1e-4)
    criterion = build_loss(LossConfig(name="asl")).to(ctx.device)
    print(f"{torch.cuda.get_device_name()}, bf16 autocast, 3-channel random inputs, 40 classes, linear head")
    print(
        f"{'model':24s} {'size':>5s} {'batch':>5s} {'cxrlt img/s':>12s} {'bare img/s':>11s} {'ratio':>6s} {'timm RTX 3090':>18s}"
    )
    for name in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            batch_size = args.batch_224 if size <= 224 else max(1, args.batch_224 * 224 * 224 // (size * size))
            cfg = ModelConfig(
                backbone=BackboneConfig(name=name, in_chans=3, img_size=size), head=HeadConfig(name="linear")
            )
            torch.manual_seed(0)
            reference = build_model(cfg, [f"c{i}" for i in range(40)])
            batch = {
                "image": torch.randn(batch_size, 3, size, size, device=ctx.device),
                "labels": (torch.rand(batch_size, 40, device=ctx.device) < 0.1).float(),
            }
            rates = {}
            for label, make in (
                ("cxrlt", lambda m: trainer_loop(m, criterion, optim, 1000, ctx)),
                ("bare", lambda m: bare_loop(m, criterion, optim, 1000, True, ctx.device)),
            ):
                step = make(copy.deepcopy(reference).to(ctx.device))
                time_steps(step, [batch] * 5, ctx.device)
                rates[label] = batch_size / time_steps(step, [batch] * args.steps, ctx.device)
                del step
                torch.cuda.empty_cache()
            timm = TIMM_RTX3090_TRAIN.get(name)
            published = f"{timm[0]:.0f} @{timm[1]}px bs{timm[2]}" if timm and size == 224 else "-"
            print(
                f"{name:24s} {size:5d} {batch_size:5d} {rates['cxrlt']:12.1f} {rates['bare']:11.1f} "
                f"{rates['cxrlt'] / rates['bare']:6.3f} {published:>18s}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    over = sub.add_parser("overhead")
    over.add_argument("--backbone", default="convnext_atto")
    over.add_argument("--head", default="ml_decoder")
    over.add_argument("--size", type=int, default=64)
    over.add_argument("--batch", type=int, default=16)
    over.add_argument("--steps", type=int, default=30)
    over.add_argument("--rounds", type=int, default=3)
    over.set_defaults(run=overhead)
    speed = sub.add_parser("throughput")
    speed.add_argument("--models", default="convnext_small,efficientnetv2_s,vit_base_patch16_224")
    speed.add_argument("--sizes", default="224,512")
    speed.add_argument("--batch-224", type=int, default=64)
    speed.add_argument("--steps", type=int, default=20)
    speed.set_defaults(run=throughput)
    args = parser.parse_args()
    try:
        args.run(args)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
