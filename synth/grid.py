"""Image grids: a batch of grayscale images in [0, 1] tiled into one 8-bit PNG (training progress in
MLflow, one grid per class in the report)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrlt.atomic import write_bytes_atomic


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) float in [0, 1] -> (N, H, W) uint8."""
    return (images[:, 0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def image_grid(images: torch.Tensor, columns: int = 8, pad: int = 2) -> Image.Image:
    """Tile `images` (N, 1, H, W) row by row on a black background with `pad` pixels between tiles."""
    pixels = to_uint8(images)
    n, h, w = pixels.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    canvas = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad), dtype=np.uint8)
    for i, tile in enumerate(pixels):
        top, left = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        canvas[top : top + h, left : left + w] = tile
    return Image.fromarray(canvas, mode="L")


def save_grid(images: torch.Tensor, path: str | os.PathLike, columns: int = 8) -> Path:
    buffer = io.BytesIO()
    image_grid(images, columns).save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())
