"""DICOM pixels for the shard writer: windowed, MONOCHROME1 inverted, 8-bit grayscale (VinDr-CXR, BRAX).

A radiograph's stored values are detector units, not display grey levels. The display chain applied
here is the one a DICOM viewer applies: the modality LUT (RescaleSlope / RescaleIntercept), then the
VOI LUT (the header's VOI LUT Sequence, else its first WindowCenter / WindowWidth) when the header has
one, which is the window the image was read in; without one, the image's own min-max range. MONOCHROME1
images (low values white, common in VinDr) are inverted so that every source stores bone bright.

`DicomLoader` is an `ImageLoader` (cxrlt.data.writer): DICOM files become PNG bytes, already shrunk to
the writer's `max_size` (a 3000 px 16-bit image is decoded once, never PNG-encoded at full size);
any other file (PNG, JPEG) passes through, so a source mixing both needs no choice. Pixels that cannot
be decoded (compressed transfer syntaxes without a decoder installed, no pixel data, colour or
multi-frame images) are ImageProblems the writer counts and lists, never crashes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cxrlt.data.images import ImageProblem, read_bytes

_PREAMBLE = 128  # a DICOM Part 10 file: 128-byte preamble, then b"DICM"


def is_dicom(data: bytes) -> bool:
    return data[_PREAMBLE : _PREAMBLE + 4] == b"DICM"


def dicom_gray8(data: bytes, where: str) -> np.ndarray:
    """(H, W) uint8 display image of a DICOM file's bytes (see the module docstring for the chain)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError) as e:
        raise ImageProblem("corrupt", f"{where}: not a readable DICOM file ({e})") from None
    if "PixelData" not in ds:
        raise ImageProblem("corrupt", f"{where}: DICOM file has no pixel data")
    try:
        stored = ds.pixel_array
    except Exception as e:  # pydicom raises per-decoder types (missing handler, truncated data, ...)
        raise ImageProblem("unreadable", f"{where}: cannot decode DICOM pixels ({type(e).__name__}: {e})") from None
    if stored.ndim != 2:
        raise ImageProblem("unreadable", f"{where}: expected one grayscale frame, got pixel array {stored.shape}")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    grey = (values - low) * (255.0 / (high - low if high > low else 1.0))
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        grey = 255.0 - grey
    return np.round(grey).astype(np.uint8)


@dataclass(frozen=True)
class DicomLoader:
    """Reads a record's file; a DICOM one comes back as PNG bytes of its display image with its long
    side at most `max_size` (the shard writer's), anything else as it is on disk."""

    max_size: int

    def __call__(self, image_id: str, path: str | None) -> bytes:
        if path is None:
            raise ImageProblem("missing", f"image {image_id} has no path")
        data = read_bytes(path)
        if not is_dicom(data):
            return data
        image = Image.fromarray(dicom_gray8(data, path), mode="L")
        image.thumbnail((self.max_size, self.max_size), Image.Resampling.BILINEAR, reducing_gap=2.0)  # in place
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)  # lossless; decoded again at once by the writer
        return buffer.getvalue()
