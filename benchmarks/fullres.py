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
   node, jitter), plus one core for the training process itself. The GPU rates are ASSUMED until #20
   part 3 measures them on an H100 (`--gpu-rate` takes measured ones): ConvNeXt-S 150-300 images/s
   (issue #20's figure); EfficientNetV2-S and ViT-B/16 run at ConvNeXt-S's rate times their speed
   relative to it on timm's published RTX 3090 AMP training benchmark (benchmarks.trainer), each taken
   to 1024 px by its forward FLOPs (counted here with torch's FLOP counter on meta tensors).
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

from benchmarks.trainer import TIMM_RTX3090_TRAIN
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
# Issue #20's figure for one H100 training ConvNeXt-S at 1024 px, to be replaced by part 3's measurement.
CONVNEXT_S_H100_1024 = (150.0, 300.0)


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


def forward_gflops(name: str, size: int) -> float:
    """Forward GFLOPs of one image through a timm model (meta tensors: nothing is allocated or run)."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = {"img_size": size} if name.startswith("vit") else {}
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def assumed_gpu_rates() -> dict[str, tuple[float, float, str]]:
    """(low, high, where from) images/s at 1024 px on one H100, per model (module docstring, item 3)."""
    per_flop = {}
    for name, (rate, size, _) in TIMM_RTX3090_TRAIN.items():
        per_flop[name] = rate * forward_gflops(name, size) / forward_gflops(name, 1024)
    low, high = CONVNEXT_S_H100_1024
    rates = {"convnext_small": (low, high, "issue #20 figure")}
    for name in ("efficientnetv2_s", "vit_base_patch16_224"):
        ratio = per_flop[name] / per_flop["convnext_small"]
        rates[name] = (low * ratio, high * ratio, f"ConvNeXt-S x {ratio:.2f} (timm RTX 3090, FLOPs at 1024)")
    return rates


def cores_per_gpu(reader_rate: float, measured: dict[str, float]) -> None:
    rates = assumed_gpu_rates()
    for name, rate in measured.items():
        rates[name] = (rate, rate, "measured (--gpu-rate)")
    print(
        f"\n3. CPU cores per GPU at 1024 px, from the reader's {reader_rate:.1f} images/s per core: "
        f"workers = ceil(GPU images/s x {HEADROOM} / {reader_rate:.1f}), cores = workers + 1 (training process)"
    )
    print(f"   {'model':22s} {'GPU images/s (H100)':>20s} {'cores per GPU':>14s}  source of the GPU rate")
    for name, (low, high, source) in rates.items():
        need = [math.ceil(rate * HEADROOM / reader_rate) + 1 for rate in (low, high)]
        span = f"{low:.0f}-{high:.0f}" if low != high else f"{low:.0f}"
        cores = f"{need[0]}-{need[1]}" if need[0] != need[1] else f"{need[0]}"
        print(f"   {name:22s} {span:>20s} {cores:>14s}  {source}")
    if not measured:
        print(
            "   GPU rates are ASSUMED, pending measurement on an H100 (#20 part 3); rerun with --gpu-rate NAME=IMG_S."
        )
    print("   SLURM: [slurm] cpus_per_node = gpus_per_node x cores per GPU; data.num_workers = cores per GPU - 1.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=Path, default=ORIGINALS, help="folder holding images/*.jpg at 1024 px")
    parser.add_argument("--images", type=int, default=256, help="images per reader / loop measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--gpu-rate", action="append", default=[], metavar="NAME=IMG_S", help="a measured GPU rate at 1024 px"
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
