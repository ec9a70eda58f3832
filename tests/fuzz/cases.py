"""Named hostile files, each a way a real or malicious sender breaks DICOM.

Every case keeps a valid File Meta Information with its own SOP Instance UID, except the
ones that are about the meta itself, so it can also be sent over DICOM unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from tests.fuzz.corpus import deflate_bomb, encode, fresh
from tests.helpers.dicom import PATIENT_BIRTH_DATE, PATIENT_ID, radiograph

#: Inflated size of the deflate bomb: just over 1 GiB, the largest data set a listener takes.
BOMB_BYTES = 2**30 + 2**24


def _valid() -> Dataset:
    """A valid DX with its own SOP Instance UID (one per call)."""
    return fresh(radiograph("DX", rows=96, columns=80, seed=7), generate_uid())


def _patched(ds: Dataset, old: bytes, new: bytes) -> bytes:
    encoded = encode(ds)
    at = encoded.data.index(old, encoded.body)
    return encoded.data[:at] + new + encoded.data[at + len(old) :]


def _with(**attributes: object) -> Callable[[], bytes]:
    def build() -> bytes:
        ds = _valid()
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        return encode(ds).data

    return build


def _truncated_half() -> bytes:
    encoded = encode(_valid())
    return encoded.data[: (encoded.body + len(encoded.data)) // 2]


def _truncated_in_meta() -> bytes:
    return encode(_valid()).data[:200]


def _meta_only() -> bytes:
    encoded = encode(_valid())
    return encoded.data[: encoded.body]


def _garbage_body() -> bytes:
    encoded = encode(_valid())
    return encoded.data[: encoded.body] + random.Random(1).randbytes(4096)


def _wrong_us_length() -> bytes:
    # (0028,0010) Rows, US, length 2 -> 4: every later element is read out of step.
    return _patched(_valid(), b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x10\x00US\x04\x00")


def _wrong_pn_length() -> bytes:
    # (0010,0010) Patient's Name claims 0xFFFF bytes: runs over everything after it.
    ds = _valid()
    name = str(ds.PatientName).encode()
    length = len(name) + len(name) % 2
    return _patched(
        ds,
        b"\x10\x00\x10\x00PN" + length.to_bytes(2, "little"),
        b"\x10\x00\x10\x00PN\xff\xff",
    )


def _implicit_huge_length() -> bytes:
    # Implicit VR: (0028,0011) Columns with a 32-bit length of 0xFFFFFFF0.
    ds = _valid()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return _patched(ds, b"\x28\x00\x11\x00\x02\x00\x00\x00", b"\x28\x00\x11\x00\xf0\xff\xff\xff")


def _short_pixel_data() -> bytes:
    ds = _valid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return encode(ds).data


def _max_columns() -> bytes:
    ds = _valid()
    ds.Rows, ds.Columns = 64, 65535
    ds.PixelData = np.tile(np.arange(256, dtype=np.uint8), 64 * 65535 // 256 + 1)[
        : 64 * 65535
    ].tobytes()
    return encode(ds).data


def _many_frames() -> bytes:
    ds = _valid()
    ds.NumberOfFrames = 1000
    ds.PixelData = ds.PixelData * 1000
    return encode(ds).data


def _private_garbage() -> bytes:
    rng = random.Random(3)
    ds = _valid()
    block = ds.private_block(0x0009, "OSTEOFLAG HOSTILE", create=True)
    block.add_new(0x10, "OB", rng.randbytes(512))
    block.add_new(0x11, "OB", rng.randbytes(64))  # becomes an SQ of garbage below
    block.add_new(0x12, "LO", "\x00\x01\xff garbage \x1b$B")
    block.add_new(0x13, "UN", rng.randbytes(33))
    sequence_tag = b"\x09\x00\x11\x10OB\x00\x00\x40\x00\x00\x00"
    return _patched(ds, sequence_tag, b"\x09\x00\x11\x10SQ\x00\x00\x40\x00\x00\x00")


def _invalid_patient_values() -> bytes:
    # Malformed identifiers: pydicom's value validation must not echo them into any log.
    ds = _valid()
    ds.PatientBirthDate = PATIENT_BIRTH_DATE[:7] + "X"
    ds.PatientID = PATIENT_ID + "\x00\x1b"
    return encode(ds).data


CASES: dict[str, Callable[[], bytes]] = {
    "truncated-half": _truncated_half,
    "truncated-in-meta": _truncated_in_meta,
    "meta-only": _meta_only,
    "garbage-body": _garbage_body,
    "wrong-us-length": _wrong_us_length,
    "wrong-pn-length": _wrong_pn_length,
    "implicit-huge-length": _implicit_huge_length,
    "deflate-bomb": lambda: deflate_bomb(BOMB_BYTES),
    "short-pixel-data": _short_pixel_data,
    "zero-rows": _with(Rows=0),
    "zero-columns-and-rows": _with(Rows=0, Columns=0),
    "max-columns": _max_columns,
    "max-columns-and-rows-declared": _with(Rows=65535, Columns=65535, BitsAllocated=16),
    "huge-multi-frame-declared": _with(NumberOfFrames=2**31 - 1),
    "many-frames": _many_frames,
    "frames-missing": _with(NumberOfFrames=1000),
    "bits-allocated-garbage": _with(BitsAllocated=0xFFFF),
    "private-garbage": _private_garbage,
    "invalid-patient-values": _invalid_patient_values,
}


#: What the worker must record for each case: final state and a piece of the reason. The
#: broken-meta case is absent: it cannot be sent, and ``infer`` gives an error line for it.
EXPECTED: dict[str, tuple[str, str]] = {
    "truncated-half": ("failed", "(7FE0,0010) Pixel Data has"),
    "meta-only": ("failed", "no (7FE0,0010) Pixel Data"),
    "garbage-body": ("failed", ""),
    "wrong-us-length": ("failed", ""),
    "wrong-pn-length": ("failed", ""),
    "implicit-huge-length": ("failed", ""),
    "deflate-bomb": ("failed", f"inflates to more than {512 * 2**20} bytes"),
    "short-pixel-data": ("failed", "fewer than the 7680 declared"),
    "zero-rows": ("failed", "(0028,0010) Rows is 0"),
    "zero-columns-and-rows": ("failed", "(0028,0010) Rows is 0"),
    "max-columns": ("done", ""),
    "max-columns-and-rows-declared": ("failed", "image too large: 65535x65535"),
    "huge-multi-frame-declared": ("failed", "2147483647 frame(s)"),
    "many-frames": ("done", ""),
    "frames-missing": ("failed", "fewer than the 7680000 declared"),
    "bits-allocated-garbage": ("failed", "(0028,0100) Bits Allocated is 65535"),
    "private-garbage": ("done", ""),
    "invalid-patient-values": ("done", ""),  # the invalid birth date is left out of the SR
}


def write_cases(folder: Path) -> dict[str, Path]:
    """Every case as ``folder/NAME.dcm``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in CASES.items():
        path = folder / f"{name}.dcm"
        path.write_bytes(build())
        paths[name] = path
    return paths
