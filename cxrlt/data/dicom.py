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

`write_dx_dicom` writes the other way: stored values as an uncompressed DX file, for the rehearsal's
VinDr-CXR stand-in (cxrlt.data.rehearsal_public) and the tests.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlt.data.images import ImageProblem, read_bytes

_PREAMBLE = 128  # a DICOM Part 10 file: 128-byte preamble, then b"DICM"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


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


def write_dx_dicom(
    values: np.ndarray, path: Path, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None
) -> Path:
    """(H, W) 12-bit stored values (uint16) as a DX DICOM Part 10 file at `path`, explicit VR little
    endian, slope 1 / intercept 0, with WindowCenter / WindowWidth = `window` when given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DX_STORAGE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = DX_STORAGE, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = values.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
