"""What decoding one image may cost, checked from its header before anything is decoded.

A radiograph needs little: a 43 x 43 cm detector at 100 um is 4300 x 4300 pixels, 37 MB of
16-bit data, and decoding it (stored values, then float64 Modality LUT and VOI steps) peaks
near :data:`BYTES_PER_PIXEL` bytes per pixel, about 450 MB. A hostile header, a deflate bomb
or a 12000 x 14000 PNG of a few hundred kB claims far more. A :class:`DecodeBudget` bounds
both what is held (the data set, a deflated one once inflated, and the declared pixel
payload) and what is decoded (the pixels of the frame), so one image never takes much more
than its ``megabytes``: the worker's per-instance budget (``[worker] decode_budget_mb``),
also applied to "try an image" uploads. A compressed frame is sized by its decoder from its
own codestream, not from Rows and Columns, so that header is checked too
(:func:`check_codestream`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO, Final

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from osteoflag.errors import PixelDataError

#: Peak bytes per pixel of decoding one frame (stored values, float64 LUT and VOI steps).
BYTES_PER_PIXEL: Final = 24
PIXEL_DATA: Final = 0x7FE00010
_MEGABYTE: Final = 2**20
#: (rows, columns, components) a codestream header declares.
Size = tuple[int, int, int]
# JPEG SOF0-SOF15 except DHT, JPG and DAC (ITU-T T.81 B.1.1.3), and JPEG-LS SOF55 (T.87 C.2.2).
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_SOS: Final = 0xDA
_J2K_SOC_SIZ: Final = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE: Final = b"\x00\x00\x00\x0cjP  "


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


def _jpeg_size(data: bytes) -> Size | None:
    """(rows, columns, components) from a JPEG or JPEG-LS frame header (T.81 B.2.2, T.87
    C.2.2), skipping fill bytes (T.81 B.1.1.2); None when there is none before the scan."""
    if data[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:
            offset += 1
            continue
        if marker in _SOF and offset + 10 <= len(data):
            rows = int.from_bytes(data[offset + 5 : offset + 7], "big")
            columns = int.from_bytes(data[offset + 7 : offset + 9], "big")
            return (rows, columns, data[offset + 9]) if rows and columns else None
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker == _SOS or length < 2:
            return None
        offset += 2 + length
    return None


def _j2k_codestream(data: bytes) -> int | None:
    """Where the codestream starts: 0, or inside the ``jp2c`` box of a JP2 file (which
    PS3.5 A.4.4 forbids, but decoders read anyway)."""
    if data.startswith(_J2K_SOC_SIZ):
        return 0
    if not data.startswith(_JP2_SIGNATURE):
        return None
    offset = 0
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        header = 8
        if length == 1:  # XLBox: a 64-bit length follows the type (ISO/IEC 15444-1 I.4)
            length, header = int.from_bytes(data[offset + 8 : offset + 16], "big"), 16
        if data[offset + 4 : offset + 8] == b"jp2c":
            return offset + header
        if length < header:
            return None
        offset += length
    return None


def _j2k_size(data: bytes) -> Size | None:
    """(rows, columns, components) from a JPEG 2000 SIZ segment (ISO/IEC 15444-1 A.5.1):
    the image area is Xsiz - XOsiz by Ysiz - YOsiz."""
    start = _j2k_codestream(data)
    if start is None or data[start : start + 4] != _J2K_SOC_SIZ or len(data) < start + 42:
        return None
    xsiz, ysiz, xosiz, yosiz = (
        int.from_bytes(data[start + at : start + at + 4], "big") for at in (8, 12, 16, 20)
    )
    components = int.from_bytes(data[start + 40 : start + 42], "big")
    if xsiz <= xosiz or ysiz <= yosiz:
        return None
    return ysiz - yosiz, xsiz - xosiz, components


def _header(buffer: BinaryIO, parse: Callable[[bytes], Size | None]) -> Size | None:
    """``parse`` of frame 1's start, read one whole fragment at a time (PS3.5 A.4: frame 1
    starts the first fragment after the Basic Offset Table) until it finds the header: a
    hostile file may put megabytes of other segments first. At most the encapsulated data,
    whose size the data set limit bounds, is read."""
    parse_basic_offsets(buffer)
    data = bytearray()
    parsed = 0  # parsed again only once the data has doubled: thousands of tiny fragments
    for fragment in generate_fragments(buffer):  # must not cost a parse each
        data += fragment
        if len(data) >= 2 * parsed:
            parsed = len(data)
            found = parse(bytes(data))
            if found is not None:
                return found
    return parse(bytes(data)) if len(data) > parsed else None


def _frame_header(
    ds: Dataset, filename: str | None, parse: Callable[[bytes], Size | None]
) -> Size | None:
    """:func:`_header` from ``filename`` when Pixel Data was left there, else from memory."""
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if filename is not None and isinstance(element, RawDataElement) and element.value is None:
        with open(filename, "rb") as handle:
            handle.seek(element.value_tell)
            return _header(handle, parse)
    return _header(BytesIO(ds.PixelData), parse)


def check_codestream(ds: Dataset, filename: str | None = None) -> None:
    """Refuse an encapsulated frame 1 whose JPEG, JPEG-LS or JPEG 2000 header declares
    another size than (0028,0010) Rows, (0028,0011) Columns and (0028,0002) Samples per
    Pixel, or has no such header: its decoder allocates what the codestream says, so a small
    file declaring 128 x 128 could decode 12000 x 12000 past the budget
    :func:`check_geometry` checked. RLE has no such header (its decoder sizes by Rows and
    Columns); a malformed encapsulation is left to the decoder, which reports it.
    ``filename`` is the file a deferred Pixel Data is read from."""
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax in JPEG2000TransferSyntaxes:
        parse, kind = _j2k_size, "JPEG 2000 image and tile size (SIZ)"
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        parse, kind = _jpeg_size, "JPEG frame header (SOF)"
    else:
        return
    try:
        found = _frame_header(ds, filename, parse)
    except Exception:  # pydicom's item parsing: the decoder reports what is wrong
        return
    if found is None:
        raise PixelDataError(
            f"(7FE0,0010) Pixel Data: frame 1 has no readable {kind} (transfer syntax {syntax})"
        )
    rows, columns, components = found
    samples = int(ds.get("SamplesPerPixel") or 1)
    if (rows, columns, components) != (ds.Rows, ds.Columns, samples):
        raise PixelDataError(
            f"(0028,0010) Rows, (0028,0011) Columns and (0028,0002) Samples per Pixel declare "
            f"{ds.Rows}x{ds.Columns}x{samples}, but frame 1's codestream (transfer syntax "
            f"{syntax}) is {rows}x{columns}x{components}"
        )
