"""Image transforms for the readers: resize to the training resolution, train-time augmentation, 1 or 3
channels, normalisation.

Parameters are drawn from an explicit numpy Generator and applied with torchvision's functional ops,
rather than torchvision's random transforms, because those draw from the process-global torch RNG: a
reader seeded per sample (cxrlt.data.readers) then gives the same augmented stream on every rerun,
and the trainer's own RNG is never touched. Horizontal flip is off by default: cardiac and aortic
findings are lateralised, so a flipped chest is not a plausible chest.

The training geometry (crop, resize, rotation) runs on the PIL image through torchvision's PIL
backend: the same ops and parameters as on a tensor, but PIL's nearest-neighbour affine warp works on
8-bit pixels where the tensor one builds a float sampling grid, which made the whole training
transform about 4x slower at 1024 px and 2-3x at 512 px when measured for #20.

Reduced-size decoding (`reduced_decode`, on by default): a JPEG stored at least twice the training
size on both sides is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (DCT scaling, PIL's `draft`), the
smallest that is still >= `size` on both sides; a smaller stored image, or a PNG, decodes at full size.
It saves part of the decode and the resize of the full image (benchmarks/fullres.py measures the
reader with and without it at 512 px from 1024 px shards). The cost: training crops (70-100 % of the
area) are cut from the reduced image and scaled up by at most ~1.3x, instead of down from the full
one; evaluation resizes the whole image either way. Set it false to keep full-resolution crops when
CPU time is not the limit.
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
    reduced_decode: bool = True

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

    @property
    def decode_size(self) -> int | None:
        """The `draft_size` for cxrlt.data.images.open_gray: reduced-size decoding (module docstring)."""
        return self.config.size if self.config.reduced_decode else None

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        c = self.config
        if self.train:
            top, left, height, width = self._crop_box(image.height, image.width, rng)
            image = F.resized_crop(image, top, left, height, width, [c.size, c.size], antialias=True)
            image = F.affine(
                image,
                angle=float(rng.uniform(-c.rotate_degrees, c.rotate_degrees)),
                translate=[round(float(rng.uniform(-c.translate, c.translate)) * c.size) for _ in range(2)],
                scale=float(rng.uniform(*c.zoom)),
                shear=[0.0, 0.0],
            )
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).unsqueeze(0)
        else:
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).unsqueeze(0)
            pixels = F.resize(pixels, [c.size, c.size], antialias=True)
        x = pixels.to(torch.float32)
        gain, offset = 1.0 / 255.0, 0.0  # 8-bit -> [0, 1]
        if self.train:
            # Brightness b, then contrast c around the image mean m: (x b - m) c + m = x b c + m (1 - c),
            # clamped to [0, 1]. Folded with the normalisation into one multiply, add and clamp: at
            # 1024 px each pass over the image costs about a millisecond.
            brightness = 1.0 + float(rng.uniform(-c.brightness, c.brightness))
            contrast = 1.0 + float(rng.uniform(-c.contrast, c.contrast))
            mean = float(x.mean()) / 255.0 * brightness
            gain, offset = brightness * contrast / 255.0, mean * (1.0 - contrast)
        x = x.mul_(gain / c.std).add_((offset - c.mean) / c.std)
        if self.train:
            x = x.clamp_(-c.mean / c.std, (1.0 - c.mean) / c.std)
            if c.hflip and rng.random() < 0.5:
                x = x.flip(-1)
        return x.expand(3, -1, -1) if c.channels == 3 else x

    def _crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box: area share from crop_scale, log-uniform aspect ratio from crop_ratio."""
        area = height * width * float(rng.uniform(*self.config.crop_scale))
        low, high = (math.log(r) for r in self.config.crop_ratio)
        ratio = math.exp(float(rng.uniform(low, high)))
        w = min(width, max(1, round(math.sqrt(area * ratio))))
        h = min(height, max(1, round(math.sqrt(area / ratio))))
        return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
