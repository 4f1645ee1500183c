"""Image transforms for the readers: resize to the training resolution, train-time augmentation, 1 or 3
channels, normalisation.

Parameters are drawn from an explicit numpy Generator and applied with torchvision's functional ops,
rather than torchvision's random transforms, because those draw from the process-global torch RNG: a
reader seeded by (seed, epoch, rank, worker) then gives the same augmented stream on every rerun,
and the trainer's own RNG is never touched. Horizontal flip is off by default: cardiac and aortic
findings are lateralised, so a flipped chest is not a plausible chest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F


@dataclass
class TransformConfig:
    size: int = 224
    channels: int = 1
    crop_scale: tuple[float, float] = (0.7, 1.0)
    crop_ratio: tuple[float, float] = (0.85, 1.15)
    rotate_degrees: float = 10.0
    translate: float = 0.05
    zoom: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.2
    contrast: float = 0.2
    hflip: bool = False
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")


class ImageTransform:
    """PIL grayscale image -> float tensor (channels, size, size); augments only when `train`."""

    def __init__(self, config: TransformConfig, train: bool) -> None:
        self.config = config
        self.train = train

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        c = self.config
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).unsqueeze(0)
        if self.train:
            top, left, height, width = self._crop_box(pixels.shape[-2], pixels.shape[-1], rng)
            pixels = F.resized_crop(pixels, top, left, height, width, [c.size, c.size], antialias=True)
            pixels = F.affine(
                pixels,
                angle=float(rng.uniform(-c.rotate_degrees, c.rotate_degrees)),
                translate=[round(float(rng.uniform(-c.translate, c.translate)) * c.size) for _ in range(2)],
                scale=float(rng.uniform(*c.zoom)),
                shear=[0.0, 0.0],
            )
        else:
            pixels = F.resize(pixels, [c.size, c.size], antialias=True)
        x = pixels.to(torch.float32).div_(255.0)
        if self.train:
            x = x.mul_(1.0 + float(rng.uniform(-c.brightness, c.brightness)))
            contrast = 1.0 + float(rng.uniform(-c.contrast, c.contrast))
            mean = x.mean()
            x = x.sub_(mean).mul_(contrast).add_(mean).clamp_(0.0, 1.0)
            if c.hflip and rng.random() < 0.5:
                x = x.flip(-1)
        x = x.sub_(c.mean).div_(c.std)
        return x.expand(3, -1, -1) if c.channels == 3 else x

    def _crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box: area share from crop_scale, log-uniform aspect ratio from crop_ratio."""
        area = height * width * float(rng.uniform(*self.config.crop_scale))
        low, high = (math.log(r) for r in self.config.crop_ratio)
        ratio = math.exp(float(rng.uniform(low, high)))
        w = min(width, max(1, round(math.sqrt(area * ratio))))
        h = min(height, max(1, round(math.sqrt(area / ratio))))
        return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
