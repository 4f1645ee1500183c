"""Data benchmarks (figures printed, nothing asserted):

1. shard-reader images/s on one core against decoding the same encoded bytes from memory in a plain
   loop with the same transform (target: reader >= 0.9x the loop);
2. shard-writer images/s with 1 and 2 workers on the embedded NIH starter (real 256 px PNGs);
3. a scale run sharding all 160,861 PadChest rows from ../shared/data/label-tables with generated 64 px
   pixels: wall time, peak RSS of the writer and of its worker processes, RSS before and after writing.

Run: .venv/bin/python benchmarks/data.py [--skip-scale] [--scale-rows N]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from cxrlt.data.build import BuildOptions, build_shards
from cxrlt.data.images import open_gray
from cxrlt.data.readers import EvalReader, ReaderConfig
from cxrlt.data.sources.padchest import read_padchest
from cxrlt.data.sources.starter import read_starter
from cxrlt.data.transforms import ImageTransform, TransformConfig
from cxrlt.data.writer import WriterOptions
from cxrlt.labels import CXR_LT_2024_ALL, NIH_14

PADCHEST = Path("/work/shared/data/label-tables/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")


class GeneratedPixels:
    """Loader giving each image id its own deterministic PNG (a gradient plus seeded noise)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image_id: str, path: str | None) -> bytes:
        rng = np.random.default_rng(zlib.crc32(image_id.encode()))
        ramp = np.linspace(0, 200, self.size)
        pixels = ramp[None, :] + ramp[:, None] / 4 + rng.normal(0, 12, (self.size, self.size))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def reader_vs_loop(workdir: Path, size: int) -> None:
    out = workdir / "reader"
    build_shards(
        read_starter(NIH_14),
        NIH_14,
        out,
        BuildOptions(split_by="none"),
        WriterOptions(max_size=256, samples_per_shard=200, workers=2),
    )
    encoded = [
        sample["img.jpg"]
        for tar in sorted(out.glob("train-*.tar"))
        for sample in wds.tarfile_samples([{"url": str(tar)}])
    ]
    transform = ImageTransform(TransformConfig(size=size), train=False)
    rng = np.random.default_rng(0)
    config = ReaderConfig(split="train", batch_size=64, transform=TransformConfig(size=size))
    loop_rates, reader_rates = [], []
    for _ in range(3):
        start = time.perf_counter()
        batch = [transform(open_gray(data, size), rng) for data in encoded]
        torch.stack(batch)
        loop_rates.append(len(encoded) / (time.perf_counter() - start))
        start = time.perf_counter()
        count = sum(len(b["id"]) for b in EvalReader(out, config, rank=0, world_size=1))
        reader_rates.append(count / (time.perf_counter() - start))
    loop, reader = max(loop_rates), max(reader_rates)
    print(f"reader vs plain loop ({len(encoded)} stored 256 px JPEGs -> {size} px tensors, 1 process, best of 3):")
    print(f"  plain decode loop from memory: {loop:8.0f} images/s")
    print(f"  EvalReader over shards:        {reader:8.0f} images/s   ratio {reader / loop:.2f}x (target >= 0.9x)")


def writer_rates(workdir: Path) -> None:
    print("shard writer on the embedded NIH starter (621 real 256 px PNGs -> 128 px JPEG):")
    for workers in (1, 2):
        table = read_starter(NIH_14)
        start = time.perf_counter()
        index = build_shards(
            table,
            NIH_14,
            workdir / f"writer-{workers}",
            BuildOptions(),
            WriterOptions(max_size=128, samples_per_shard=100, workers=workers),
        )
        elapsed = time.perf_counter() - start
        print(f"  {workers} worker(s): {index.num_samples / elapsed:8.0f} images/s ({elapsed:.2f} s)")


def padchest_scale(workdir: Path, rows: int | None, workers: int) -> None:
    start = time.perf_counter()
    table = read_padchest(PADCHEST, None, CXR_LT_2024_ALL)
    if rows is not None:
        table.records = table.records[:rows]
    read_s = time.perf_counter() - start
    before = rss_mb()
    start = time.perf_counter()
    index = build_shards(
        table,
        CXR_LT_2024_ALL,
        workdir / "padchest",
        BuildOptions(),
        WriterOptions(max_size=64, image_format="png", samples_per_shard=5000, workers=workers),
        loader=GeneratedPixels(64),
    )
    write_s = time.perf_counter() - start
    size_mb = sum(p.stat().st_size for p in (workdir / "padchest").glob("*.tar")) / 2**20
    print(f"PadChest scale run ({len(table.records):,} rows, generated 64 px pixels, {workers} workers):")
    print(f"  read + label table: {read_s:.1f} s; shard: {write_s:.1f} s ({index.num_samples / write_s:.0f} images/s)")
    print(f"  {index.num_samples:,} samples in {len(index.shards)} shards ({size_mb:.0f} MiB), splits {index.splits}")
    print(
        f"  RSS before writing {before:.0f} MiB, after {rss_mb():.0f} MiB; peak RSS writer "
        f"{peak_mb(resource.RUSAGE_SELF):.0f} MiB, largest worker {peak_mb(resource.RUSAGE_CHILDREN):.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="reader output resolution")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--scale-rows", type=int, help="shard only the first N PadChest rows")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"cores available: {len(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory(prefix="cxrlt-bench-") as tmp:
        workdir = Path(tmp)
        reader_vs_loop(workdir, args.size)
        writer_rates(workdir)
        if not args.skip_scale:
            padchest_scale(workdir, args.scale_rows, args.workers)


if __name__ == "__main__":
    main()
