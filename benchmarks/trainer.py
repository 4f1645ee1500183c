"""Trainer benchmarks: step-time overhead against a bare PyTorch loop, GPU training throughput, and the
time a resumed run takes to its first optimizer step.

    python -m benchmarks.trainer overhead [--backbone convnext_atto --size 64 --batch 16 --steps 40]
    python -m benchmarks.trainer throughput [--models convnext_small,efficientnetv2_s,vit_base_patch16_224]
    python -m benchmarks.trainer resume [--originals ../shared/data/nih-starter-1024 --size 1024]

overhead: the same model weights, the same batches (real starter images decoded once into memory)
and the same loss, trained (a) by a bare loop: forward, backward, clip, AdamW, schedule; (b) by the
trainer's own `train_step` on its DeepSpeed engine plus the per-step stop-request all-reduce. Both run
in one process (a group of one), alternating blocks so drift on a shared machine hits both alike.
Target: (b) / (a) <= 1.10. bf16 autocast on CUDA, fp32 on CPU.

throughput: training images/s of the trainer step for the CXR-LT backbones at 224 and 512 px (3
channels, random inputs as timm's benchmark uses), next to a bare AMP loop on the same GPU and timm's
published RTX 3090 AMP training figure (timm results/benchmark-train-amp-nchw-pt112-cu113-
rtx3090.csv), which is the reference timm itself publishes for these architectures.

resume (#20): how long a run interrupted at 10 % and at 90 % of an epoch takes to train again, on the
1024 px NIH originals sharded at 1024 px (benchmarks.fullres). Target: no growth with the position.
(a) The training reader alone, on an epoch of `--epoch-images`: time to the first batch at the
    position when the reader skips the batches before it (what --resume does), next to decoding them
    and throwing them away (the replay --resume did before #20). Then the skip alone at 90 % of a
    `--long-epoch-images` epoch: what skipping costs per sample (tar headers and json are still read).
(b) `cxrlt train` for real (DeepSpeed engine, 1 rank, convnext_atto, one DataLoader worker, a
    checkpoint every step, 20 steps of 2 images per epoch): SIGKILLed once its checkpoint reaches the
    position, then `cxrlt train --resume`; the time from starting it to its first optimizer step (the
    MLflow timestamp of that step's train/loss), and from its "resuming" line (checkpoint restored) to
    that step, which holds the skip. The training process is then killed.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

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
from cxrlt.tracking import Tracker, sqlite_uri
from trainers import distributed
from trainers.config import DeepSpeedConfig, OptimConfig
from trainers.engine import build_engine, parameter_groups, trainer_clips, use_bf16, warmup_cosine
from trainers.loop import train_step

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train-starter-tiny.toml"

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
    for step in loops.values():  # warm-up: allocator, autotuning, first DeepSpeed step
        time_steps(step, batches[:5], ctx.device)
    for _ in range(args.rounds):
        for name, step in loops.items():
            times[name].append(time_steps(step, batches, ctx.device))
    bare, ours = statistics.median(times["bare"]), statistics.median(times["cxrlt"])
    print(
        f"device {ctx.device} ({torch.cuda.get_device_name() if ctx.device.type == 'cuda' else os.cpu_count()} "
        f"{'GPU' if ctx.device.type == 'cuda' else 'CPUs'}), threads {torch.get_num_threads()}, bf16 {bf16}"
    )
    print(f"{args.backbone} {args.head} head, {args.size} px, batch {args.batch}, {args.steps} steps x {args.rounds}")
    for label, name, value in (("bare PyTorch loop", "bare", bare), ("cxrlt train_step ", "cxrlt", ours)):
        rounds = ", ".join(f"{t * 1000:.1f}" for t in times[name])
        print(f"{label} : {value * 1000:8.2f} ms/step  (rounds: {rounds})")
    print(f"ratio cxrlt / bare: {ours / bare:.3f}  (target <= 1.10)")


def throughput(args: argparse.Namespace) -> None:
    ctx = distributed.init()
    if ctx.device.type != "cuda":
        raise SystemExit("throughput needs a CUDA device")
    optim = OptimConfig(lr=1e-4)
    criterion = build_loss(LossConfig(name="asl")).to(ctx.device)
    print(f"{torch.cuda.get_device_name()}, bf16 autocast, 3-channel random inputs, 40 classes, linear head")
    header = f"{'model':24s} {'size':>5s} {'batch':>5s} {'cxrlt img/s':>12s} {'bare img/s':>11s} {'ratio':>6s}"
    print(f"{header} {'timm RTX 3090':>18s}")
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


def skip_vs_replay(shards: Path, size: int, epoch_images: int, long_epoch_images: int) -> None:
    steps = epoch_images // 16
    config = ReaderConfig(batch_size=16, steps_per_epoch=steps, transform=TransformConfig(size=size))
    print(f"(a) TrainReader, 1 process, 1 thread, {size} px, epoch of {steps} batches of 16, shuffle buffer 1000:")
    print(
        f"    {'position':>16s} {'skip (resume now)':>18s} {'replay (before #20)':>20s}  (seconds to the first batch)"
    )
    for fraction in (0.1, 0.9):
        start = round(steps * fraction)
        reader = TrainReader(shards, config, rank=0, world_size=1)
        began = time.perf_counter()
        reader.set_epoch(0, start=start)
        next(iter(reader))
        skip = time.perf_counter() - began
        began = time.perf_counter()
        reader.set_epoch(0)
        batches = iter(reader)
        for _ in range(start + 1):
            next(batches)
        replay = time.perf_counter() - began
        where = f"batch {start} ({fraction:.0%})"
        print(f"    {where:>16s} {skip:18.2f} {replay:20.2f}")
    # The skip still reads each skipped sample's tar headers and json: its cost per sample, on a long epoch.
    steps = long_epoch_images // 16
    reader = TrainReader(shards, replace(config, steps_per_epoch=steps), rank=0, world_size=1)
    start = round(steps * 0.9)
    began = time.perf_counter()
    reader.set_epoch(0, start=start)
    next(iter(reader))
    skip = time.perf_counter() - began
    print(
        f"    batch {start} (90%) of an epoch of {steps} batches: skip {skip:.2f} s, "
        f"{skip / (start * 16) * 1e6:.0f} us per skipped sample (replay not run)"
    )


class _Training:
    """One `cxrlt train` process in its own session (SIGKILL reaches torchrun and its workers)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.started = time.time()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "cxrlt"), *args],
            cwd=cwd,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr or []:
            self.lines.append((time.time(), line))

    def alive(self) -> None:
        if self.process.poll() is not None:
            time.sleep(0.5)
            raise SystemExit("cxrlt train ended early:\n" + "".join(line for _, line in self.lines[-30:]))

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        time.sleep(2)  # torchrun's workers die with the group; let them go before the next run


def _latest_step(run_dir: Path) -> int:
    pointer = run_dir / "checkpoints" / "latest"
    return int(pointer.read_text().strip().removeprefix("step-")) if pointer.is_file() else 0


def trainer_resume(shards: Path, work: Path, size: int) -> None:
    steps = 20
    print(
        f"(b) cxrlt train --resume, 1 rank, convnext_atto at {size} px, 1 DataLoader worker, "
        f"epoch of {steps} steps x 2 images:"
    )
    print(f"    {'position':>16s} {'start -> 1st step':>18s} {'restored -> 1st step':>21s}  (seconds)")
    for fraction in (0.1, 0.9):
        out = work / f"run-{fraction:.0%}"
        sets = [
            f"data.shards={shards}",
            f"run.out_dir={out}",
            f"data.transform.size={size}",
            "data.batch_size=2",
            f"data.steps_per_epoch={steps}",
            "data.num_workers=1",
            "schedule.epochs=1",
            "run.log_every=1",
            "checkpoint.every_steps=1",
        ]
        args = ["train", str(TINY_CONFIG), *[a for s in sets for a in ("--set", s)], "--nproc", "1"]
        first = _Training(args, work)
        while _latest_step(out) < round(steps * fraction):
            first.alive()
            time.sleep(0.05)
        first.kill()
        killed_at = _latest_step(out)
        resumed = _Training([*args, "--resume"], work)
        client = Tracker(sqlite_uri(work)).client
        run_id = (out / "mlflow_run_id").read_text().strip()
        stepped = None
        while stepped is None:
            resumed.alive()
            time.sleep(0.2)
            history = client.get_metric_history(run_id, "train/loss")
            # The killed run may have logged that step too before it died: take the resumed run's.
            stepped = next(
                (
                    m.timestamp / 1000
                    for m in history
                    if m.step == killed_at + 1 and m.timestamp / 1000 > resumed.started
                ),
                None,
            )
        resumed.kill()
        restored = next(t for t, line in resumed.lines if "resuming" in line)
        where = f"step {killed_at} ({killed_at / steps:.0%})"
        print(f"    {where:>16s} {stepped - resumed.started:18.2f} {stepped - restored:21.2f}")
    # The last run's uninterrupted steps, for scale: restored -> 1st step is about one batch and one step.
    times = sorted(m.timestamp / 1000 for m in history if m.step <= killed_at)
    step = statistics.median(b - a for a, b in itertools.pairwise(times))
    print(f"    one ordinary training step here (median over the {len(times)} steps before the kill): {step:.2f} s")


def resume(args: argparse.Namespace) -> None:
    from benchmarks.fullres import ORIGINALS, machine, write_shards

    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="cxrlt-resume-") as tmp:
        work = Path(tmp)
        write_shards(args.originals or ORIGINALS, work / "shards")
        skip_vs_replay(work / "shards", args.size, args.epoch_images, args.long_epoch_images)
        trainer_resume(work / "shards", work, args.size)


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
    again = sub.add_parser("resume")
    again.add_argument("--originals", type=Path, help="1024 px NIH originals (default ../shared/data/nih-starter-1024)")
    again.add_argument("--size", type=int, default=1024, help="training resolution")
    again.add_argument("--epoch-images", type=int, default=1024, help="epoch length of the reader part")
    again.add_argument("--long-epoch-images", type=int, default=102400, help="epoch length for the skip cost")
    again.set_defaults(run=resume)
    args = parser.parse_args()
    try:
        args.run(args)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
