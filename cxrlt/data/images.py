"""Pixels: decode once to 8-bit grayscale at reduced size, encode for a shard; classify bad images.

JPEG sources are decoded with PIL's `draft()`, which lets libjpeg decode at 1/2, 1/4 or 1/8 scale (the
DCT is truncated), so a 3000 px MIMIC JPEG bound for 512 px never materialises at full size. Other
formats decode fully and are then resized. 16-bit PNGs (PadChest) are windowed to their own min-max
range, since their stored bit depth varies by scanner and a fixed shift would leave many nearly black.

A bad image is an `ImageProblem` with a reason ("missing", "truncated", "corrupt", "unreadable"), for
the writer to count and list in `_index.json`; it never escapes as a crash.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 6


class ImageProblem(Exception):
    """An image that cannot be used; `reason` is one of the skip reasons listed in `_index.json`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageProblem("missing", f"no file at {path}") from None
    except OSError as e:
        raise ImageProblem("unreadable", f"{path}: {e}") from None


def open_gray(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode to 8-bit grayscale; a JPEG is decoded at the smallest DCT scale still >= `draft_size`."""
    try:
        image = Image.open(io.BytesIO(data))
        if draft_size is not None and image.format == "JPEG":
            image.draft("L", (draft_size, draft_size))
        image.load()
    except UnidentifiedImageError as e:
        raise ImageProblem("corrupt", f"not a recognised image: {e}") from None
    except OSError as e:
        reason = "truncated" if "truncated" in str(e) else "corrupt"
        raise ImageProblem(reason, str(e)) from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageProblem("corrupt", str(e)) from None
    if image.width == 0 or image.height == 0:
        raise ImageProblem("corrupt", "image has zero size")
    return to_gray8(image)


def decode_gray(data: bytes, max_size: int) -> Image.Image:
    """Decode encoded bytes to an 8-bit grayscale image whose long side is at most `max_size`."""
    image = open_gray(data, max_size)
    if max(image.size) > max_size:
        scale = max_size / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image


def to_gray8(image: Image.Image) -> Image.Image:
    if image.mode == "L":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        span = high - low if high > low else 1.0
        return Image.fromarray(np.round((pixels - low) * (255.0 / span)).astype(np.uint8), mode="L")
    return image.convert("L")


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    elif image_format == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        raise ValueError(f"image format {image_format!r} is not jpg or png")
    return buffer.getvalue()


@dataclass(frozen=True)
class FileLoader:
    """Reads an image's encoded bytes from its record path (the loader every source uses by default)."""

    def __call__(self, image_id: str, path: str | None) -> bytes:
        if path is None:
            raise ImageProblem("missing", f"image {image_id} has no path")
        return read_bytes(os.fspath(path))
