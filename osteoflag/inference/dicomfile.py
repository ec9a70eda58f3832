"""Open a received DICOM file without letting a hostile one take the process down.

pydicom reads a whole Part 10 file into memory, and inflates a Deflated Explicit VR Little
Endian data set (PS3.5 A.5) with one unbounded ``zlib.decompress`` call, so a small file can
claim gigabytes (a "deflate bomb"). :func:`read_instance` bounds both before pydicom sees
the file: the file size, and the inflated size, measured by streaming the deflate stream
through a bounded decompressor whose output is thrown away.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Final

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from osteoflag.errors import PixelDataError
from osteoflag.inference.budget import DEFAULT_BUDGET

#: Values larger than this stay on disk until used (pydicom's deferred read), so that a
#: multi-frame Pixel Data is not held in memory while only its first frame is decoded.
DEFER_SIZE: Final = "1 MB"

_PREAMBLE: Final = 128
_CHUNK: Final = 1 << 20
# Explicit VR with a reserved field and a 32-bit length (PS3.5 Table 7.1-1).
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# Everything pydicom's parser raises on malformed input, besides its own InvalidDicomError.
_READ_ERRORS: Final = (
    InvalidDicomError,
    OSError,
    ValueError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    NotImplementedError,
    AttributeError,
    OverflowError,
    struct.error,
    zlib.error,
)


def _file_meta(head: bytes) -> tuple[str, int]:
    """Transfer Syntax UID and the offset of the data set after the File Meta Information.

    The meta group is always Explicit VR Little Endian (PS3.10 7.1), so it is walked here
    with a few lines rather than through pydicom's private reader.
    """
    offset, syntax = _PREAMBLE + 4, ""
    while offset + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, offset)
        if group != 0x0002:
            break
        vr = head[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", head, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", head, offset + 6)
            start = offset + 8
        if element == 0x0010:
            syntax = head[start : start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        offset = start + length
    return syntax, offset


def _check_inflated_size(path: Path, offset: int, limit: int) -> None:
    """Stream the deflated data set through zlib and refuse it once it exceeds ``limit``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(_CHUNK):
                while chunk:
                    total += len(inflater.decompress(chunk, _CHUNK))
                    if total > limit:
                        raise PixelDataError(
                            f"{path}: deflated data set (transfer syntax "
                            f"{DeflatedExplicitVRLittleEndian}) inflates to more than {limit} bytes"
                        )
                    chunk = inflater.unconsumed_tail
    except zlib.error as exc:
        raise PixelDataError(f"{path}: deflated data set is corrupt: {exc}") from exc


def check_dataset_size(path: Path, limit: int = DEFAULT_BUDGET.max_dataset_bytes) -> None:
    """Refuse a file larger than ``limit``, or a deflated one that inflates beyond it."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(64 * 1024)
    except OSError as exc:
        raise PixelDataError(f"{path}: cannot be read: {exc}") from exc
    if size > limit:
        raise PixelDataError(f"{path}: file of {size} bytes exceeds the {limit}-byte limit")
    if head[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return
    try:
        syntax, offset = _file_meta(head)
    except struct.error as exc:
        raise PixelDataError(f"{path}: File Meta Information is truncated") from exc
    if syntax == DeflatedExplicitVRLittleEndian:
        _check_inflated_size(path, offset, limit)


def read_instance(
    path: Path, *, force: bool = False, limit: int = DEFAULT_BUDGET.max_dataset_bytes
) -> Dataset:
    """Read ``path`` with pydicom after :func:`check_dataset_size`; errors name the file."""
    check_dataset_size(path, limit)
    try:
        ds = pydicom.dcmread(path, force=force, defer_size=DEFER_SIZE)
        if (
            ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
            == DeflatedExplicitVRLittleEndian
        ):
            ds = pydicom.dcmread(
                path, force=force
            )  # deferred offsets would be into the inflated data
        return ds
    except _READ_ERRORS as exc:
        raise PixelDataError(f"{path}: cannot be read as DICOM: {exc}") from exc
