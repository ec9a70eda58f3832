"""What decoding one image may cost, checked from its header before anything is decoded.

A radiograph needs little: a 43 x 43 cm detector at 100 um is 4300 x 4300 pixels, 37 MB of
16-bit data, and decoding it (stored values, then float64 Modality LUT and VOI steps) peaks
near :data:`BYTES_PER_PIXEL` bytes per pixel, about 450 MB. A hostile header, a deflate bomb
or a 12000 x 14000 PNG of a few hundred kB claims far more. A :class:`DecodeBudget` bounds
both what is held (the data set, a deflated one once inflated, and the declared pixel
payload) and what is decoded (the pixels of the frame), so one image never takes much more
than its ``megabytes``: the worker's per-instance budget (``[worker] decode_budget_mb``),
also applied to "try an image" uploads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from osteoflag.errors import PixelDataError

#: Peak bytes per pixel of decoding one frame (stored values, float64 LUT and VOI steps).
BYTES_PER_PIXEL: Final = 24
PIXEL_DATA: Final = 0x7FE00010
_MEGABYTE: Final = 2**20


@dataclass(frozen=True)
class DecodeBudget:
    """Memory one image may take to read and decode, in MiB."""

    megabytes: int

    def __post_init__(self) -> None:
        if self.megabytes < 1:
            raise ValueError(f"decode budget must be at least 1 MB, got {self.megabytes}")

    @property
    def max_dataset_bytes(self) -> int:
        """Largest data set held in memory (on disk, or once inflated) or pixel payload."""
        return self.megabytes * _MEGABYTE

    @property
    def max_pixels(self) -> int:
        """Largest frame (Rows x Columns, or width x height) decoded."""
        return self.max_dataset_bytes // BYTES_PER_PIXEL

    def check_picture(self, width: int, height: int) -> None:
        """Refuse a PNG/JPEG whose header declares more pixels than the budget allows."""
        if width * height > self.max_pixels:
            raise PixelDataError(f"image too large ({width}x{height}): {self.exceeded}")

    @property
    def exceeded(self) -> str:
        """What an image over the budget is told."""
        return f"exceeds the decode budget of {self.megabytes} MB ({self.max_pixels} pixels)"


#: Enough for any radiograph (22 Mpx, 4700 x 4700), used where no setting chooses another.
DEFAULT_BUDGET: Final = DecodeBudget(512)


def check_geometry(ds: Dataset, budget: DecodeBudget) -> int:
    """Validate the Image Pixel module against ``budget`` before decoding; return the number
    of frames."""
    if "PixelData" not in ds:
        raise PixelDataError("no (7FE0,0010) Pixel Data")
    for keyword, tag in (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")):
        value = ds.get(keyword)
        if not isinstance(value, int) or value < 1:
            raise PixelDataError(f"{tag} {keyword} is {value!r}; expected a positive integer")
    bits = ds.get("BitsAllocated")
    if bits not in (1, 8, 16, 32, 64):
        raise PixelDataError(f"(0028,0100) Bits Allocated is {bits!r}")
    raw_frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(raw_frames or 1)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"(0028,0008) Number of Frames is {raw_frames!r}") from exc
    if frames < 1:
        raise PixelDataError(f"(0028,0008) Number of Frames is {frames}")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3.1.2)
    frame_pixels = ds.Rows * ds.Columns
    declared = frame_pixels * samples * frames * bits / 8
    if frame_pixels > budget.max_pixels or declared > budget.max_dataset_bytes:
        raise PixelDataError(
            f"image too large: {ds.Rows}x{ds.Columns}x{samples} with {frames} frame(s) "
            f"{budget.exceeded}"
        )
    syntax = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is None:
        raise PixelDataError("no (0002,0010) Transfer Syntax UID in the file meta information")
    if not UID(syntax).is_compressed:
        expected = math.ceil(declared)
        actual = pixel_data_length(ds)
        if actual < expected:
            raise PixelDataError(
                f"(7FE0,0010) Pixel Data has {actual} bytes, fewer than the {expected} declared "
                f"by Rows, Columns, Samples per Pixel, Bits Allocated and Number of Frames"
            )
    return frames


def pixel_data_length(ds: Dataset) -> int:
    """Bytes of Pixel Data, without reading a deferred value into memory."""
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        return 0
    if element.value is None and isinstance(element, RawDataElement):
        return int(element.length)
    return len(element.value)
