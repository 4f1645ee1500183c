"""Full-resolution input pipeline (#20): real 1024 px chest X-ray JPEGs through the shard writer and the
training reader on one CPU core, and the CPU cores one GPU needs to never wait for images.

    .venv/bin/python -m benchmarks.fullres [--originals ../shared/data/nih-starter-1024] [--images 256]
                                           [--gpu-rate convnext_small=300 ...]

1. Shard writer, one worker process: the 621 NIH originals (1024 x 1024 JPEG) decoded, re-encoded as
   1024 px JPEG (quality 95) and written as shards: images/s.
2. Training reader, one process, one thread: TrainReader over those shards (tar reading, sample
   stream, shuffle, decode, the training transform, batching), at 1024 px and at 512 px; at 512 once
   with reduced-size JPEG decoding (DCT scaling, the default since 512 is half the stored size) and
   once without. Next to it, the bare loop: PIL decode and the same transform over the same encoded
   bytes, held in memory, in the reader's own sample order, stacked into batches like the reader's.
   Target: reader >= 0.9x the bare loop. Also the bare decode alone, without the transform. Rates are
   taken after the first batch, rounds alternate reader and loop, the best round counts.
3. Cores per GPU at 1024 px for ConvNeXt-S, EfficientNetV2-S and ViT-B/16: DataLoader workers =
   ceil(GPU images/s x 1.25 / reader images/s per core) (25 % headroom: a different CPU on the GPU
   node, jitter), plus one core for the training process itself. The GPU rates are the trainer's own
   measured on one H200 (`benchmarks.trainer throughput`); `--gpu-rate` takes a cluster's own.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.images import read_bytes
from cxrlt.data.readers import ReaderConfig, TrainReader
from cxrlt.data.sources.starter import read_starter
from cxrlt.data.tarstream import tar_samples
from cxrlt.data.transforms import ImageTransform, TransformConfig
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import NIH_14

REPO = Path(__file__).resolve().parents[1]
ORIGINALS = REPO.parent / "shared" / "data" / "nih-starter-1024"
BATCH = 16
HEADROOM = 1.25
# Training images/s at 1024 px on one H200 (bf16 autocast, DeepSpeed engine, the trainer's own step), as
# `python -m benchmarks.trainer throughput --sizes 1024` printed them on 2026-11-30: ConvNeXt-S and
# EfficientNetV2-S at batch 33, ViT-B/16 at batch 12. `--gpu-rate` replaces them with a cluster's own.
H200_TRAIN_1024 = {"convnext_small": 103.1, "efficientnetv2_s": 84.6, "vit_base_patch16_224": 79.3}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores available, Python {platform.python_version()}"


class OriginalJpegs:
    """Writer loader: the starter table's image path -> the 1024 px original with the same stem."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, image_id: str, path: str | None) -> bytes:
        return read_bytes(str(self.folder / f"{Path(path or image_id).stem}.jpg"))


def write_shards(originals: Path, out: Path) -> float:
    """Shards the originals at 1024 px with one worker; returns images/s."""
    start = time.perf_counter()
    index = build_shards(
        read_starter(NIH_14),
        NIH_14,
        out,
        BuildOptions(),
        WriterOptions(max_size=1024, samples_per_shard=100, workers=1),
        loader=OriginalJpegs(originals / "images"),
    )
    elapsed = time.perf_counter() - start
    if index.max_size != 1024 or index.num_samples + index.num_skipped != 621:
        raise SystemExit(f"{originals}: expected the 621 NIH originals, sharded {index.num_samples}")
    return index.num_samples / elapsed


def _reader(shards: Path, transform: TransformConfig, images: int) -> TrainReader:
    config = ReaderConfig(batch_size=BATCH, shuffle_buffer=256, steps_per_epoch=images // BATCH, transform=transform)
    return TrainReader(shards, config, rank=0, world_size=1)


def _bare_loop(encoded: list[bytes], transform: TransformConfig, decode_only: bool = False) -> Iterator[int]:
    """PIL decode (+ the training transform) over encoded bytes, batched like the reader; yields batch sizes."""
    augment = ImageTransform(transform, train=True)
    rng = np.random.default_rng(0)
    for first in range(0, len(encoded), BATCH):
        batch = []
        for data in encoded[first : first + BATCH]:
            image = Image.open(io.BytesIO(data))
            if transform.reduced_decode:
                image.draft("L", (transform.size, transform.size))
            image.load()
            batch.append(image if decode_only else augment(image, rng))
        if not decode_only:
            torch.stack(batch)
        yield len(batch)


def steady_rate(batch_sizes: Iterator[int]) -> float:
    """Images/s after the first batch, which carries one-off costs (the reader's initial shuffle-buffer
    fill reads that many samples before the first batch)."""
    next(batch_sizes)
    start = time.perf_counter()
    count = sum(batch_sizes)
    return count / (time.perf_counter() - start)


def reader_vs_loop(shards: Path, images: int, rounds: int) -> dict[str, float]:
    """Prints the reader/loop table; returns reader images/s per setting."""
    by_id = {s["__key__"]: s["img.jpg"] for tar in sorted(shards.glob("train-*.tar")) for s in tar_samples(str(tar))}
    settings = [
        ("1024 px", TransformConfig(size=1024)),
        ("512 px, reduced-size decode", TransformConfig(size=512)),
        ("512 px, full decode", TransformConfig(size=512, reduced_decode=False)),
    ]
    print(
        f"\n2. training reader vs bare PIL loop, 1 process, 1 thread, {images} images each (rate after the first "
        f"batch of {BATCH}), best of {rounds}:"
    )
    print(f"   {'setting':30s} {'decode only':>12s} {'bare loop':>10s} {'reader':>8s} {'reader/loop':>12s}  (images/s)")
    rates = {}
    for label, transform in settings:
        reader = _reader(shards, transform, images)
        order = [image_id for batch in reader for image_id in batch["id"]]  # the reader's sample order
        encoded = [by_id[image_id] for image_id in order]
        loop, ours, decode = [], [], []
        for _ in range(rounds):  # alternated, so drift on a shared machine hits both alike
            loop.append(steady_rate(_bare_loop(encoded, transform)))
            ours.append(steady_rate(len(batch["id"]) for batch in reader))
            decode.append(steady_rate(_bare_loop(encoded, transform, decode_only=True)))
        rates[label] = max(ours)
        print(
            f"   {label:30s} {max(decode):12.1f} {max(loop):10.1f} {max(ours):8.1f} "
            f"{max(ours) / max(loop):11.2f}x  (target >= 0.90x)"
        )
    speedup = rates["512 px, reduced-size decode"] / rates["512 px, full decode"]
    print(f"   reduced-size decoding at 512 px from 1024 px shards: reader {speedup:.2f}x faster than full decode")
    return rates


def cores_per_gpu(reader_rate: float, measured: dict[str, float]) -> None:
    rates = {name: (rate, "H200, benchmarks.trainer throughput") for name, rate in H200_TRAIN_1024.items()}
    rates.update((name, (rate, "--gpu-rate")) for name, rate in measured.items())
    print(
        f"\n3. CPU cores per GPU at 1024 px, from the reader's {reader_rate:.1f} images/s per core: "
        f"workers = ceil(GPU images/s x {HEADROOM} / {reader_rate:.1f}), cores = workers + 1 (training process)"
    )
    print(f"   {'model':22s} {'GPU images/s':>13s} {'cores per GPU':>14s}  source of the GPU rate")
    for name, (rate, source) in rates.items():
        cores = math.ceil(rate * HEADROOM / reader_rate) + 1
        print(f"   {name:22s} {rate:13.0f} {cores:14d}  {source}")
    print("   SLURM: [slurm] cpus_per_node = gpus_per_node x cores per GPU; data.num_workers = cores per GPU - 1.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=Path, default=ORIGINALS, help="folder holding images/*.jpg at 1024 px")
    parser.add_argument("--images", type=int, default=256, help="images per reader / loop measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--gpu-rate", action="append", default=[], metavar="NAME=IMG_S", help="your GPU's training rate at 1024 px"
    )
    args = parser.parse_args()
    measured = {name: float(rate) for name, rate in (item.split("=", 1) for item in args.gpu_rate)}
    if not (args.originals / "images").is_dir():
        raise SystemExit(f"{args.originals}/images is missing: give --originals (the 1024 px NIH starter)")
    torch.set_num_threads(1)
    print(f"machine: {machine()}; torch {torch.__version__}, Pillow {Image.__version__}, 1 thread")
    with tempfile.TemporaryDirectory(prefix="cxrlt-fullres-") as tmp:
        shards = Path(tmp) / "shards-1024"
        writer = write_shards(args.originals, shards)
        print(f"\n1. shard writer, 1 worker: {writer:.1f} images/s (621 originals, 1024 px JPEG -> 1024 px JPEG q95)")
        rates = reader_vs_loop(shards, args.images, args.rounds)
    cores_per_gpu(rates["1024 px"], measured)


if __name__ == "__main__":
    main()
