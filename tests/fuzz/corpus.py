"""Hostile DICOM files: named broken cases and a seeded mutation fuzzer over valid DX files.

Independent of osteoflag: it only uses pydicom to write valid files and then breaks their
bytes, so a bug in osteoflag's own reader cannot hide one here. The File Meta Information
is always left intact (with a fresh SOP Instance UID) so each file can be sent over
DICOM with pynetdicom's raw (non-decoding) C-STORE and is stored as a distinct instance.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from tests.helpers.dicom import radiograph, write_in_syntax

#: Base transfer syntaxes the fuzzer mutates (uncompressed, deflated and encapsulated).
FUZZ_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_EXTREMES = (0, 1, 2, 3, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0xFFFE, 0x7FFFFFFF, 0xFFFFFFFF)


@dataclass(frozen=True)
class Encoded:
    """A Part 10 file as bytes, with the offset where the data set starts after the meta."""

    data: bytes
    body: int
    syntax: UID


def _meta_end(data: bytes) -> int:
    offset = 132
    while struct.unpack_from("<H", data, offset)[0] == 0x0002:
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            offset += 12 + struct.unpack_from("<I", data, offset + 8)[0]
        else:
            offset += 8 + struct.unpack_from("<H", data, offset + 6)[0]
    return offset


def encode(ds: Dataset) -> Encoded:
    """``ds`` as Part 10 bytes in its file meta's transfer syntax."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return Encoded(data, _meta_end(data), UID(ds.file_meta.TransferSyntaxUID))


def fresh(ds: Dataset, key: str) -> Dataset:
    """A copy of ``ds`` with a SOP Instance UID derived from ``key`` (same key, same UID)."""
    copy = deepcopy(ds)
    uid = generate_uid(entropy_srcs=[key])
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = uid
    return copy


def base_datasets(folder: Path, seed: int) -> list[Dataset]:
    """One valid DX data set per fuzzed transfer syntax (pydicom and DCMTK encoders)."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = []
    for index, syntax in enumerate(FUZZ_SYNTAXES):
        image = radiograph("DX", rows=72, columns=64, seed=seed + index)
        image.StudyInstanceUID = generate_uid(entropy_srcs=[f"{seed}:study"])
        image.SeriesInstanceUID = generate_uid(entropy_srcs=[f"{seed}:series"])
        image.SOPInstanceUID = generate_uid(entropy_srcs=[f"{seed}:base:{index}"])
        image.file_meta.MediaStorageSOPInstanceUID = image.SOPInstanceUID
        path = write_in_syntax(image, syntax, folder / f"{index}.dcm")
        bases.append(dcmread(path))
    return bases


def element_lengths(encoded: Encoded) -> list[tuple[int, int]]:
    """(offset, size) of every top-level element's length field in an uncompressed body."""
    if encoded.syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return []
    data, offset, found = encoded.data, encoded.body, []
    implicit = encoded.syntax == ImplicitVRLittleEndian
    while offset + 8 <= len(data):
        if implicit:
            field, size, header = offset + 4, 4, 8
        elif data[offset + 4 : offset + 6] in _LONG_VRS:
            field, size, header = offset + 8, 4, 12
        else:
            field, size, header = offset + 6, 2, 8
        found.append((field, size))
        length = int.from_bytes(data[field : field + size], "little")
        if length == 0xFFFFFFFF:
            break  # undefined length: the rest is items; stop the top-level walk here
        offset += header + length
    return found


def _flip(rng: random.Random, enc: Encoded) -> bytes:
    data = bytearray(enc.data)
    for _ in range(rng.randint(1, 24)):
        data[rng.randrange(enc.body, len(data))] = rng.randrange(256)
    return bytes(data)


def _truncate(rng: random.Random, enc: Encoded) -> bytes:
    return enc.data[: rng.randrange(enc.body, len(enc.data))]


def _insert(rng: random.Random, enc: Encoded) -> bytes:
    at = rng.randrange(enc.body, len(enc.data))
    return enc.data[:at] + rng.randbytes(rng.randint(1, 64)) + enc.data[at:]


def _length(rng: random.Random, enc: Encoded) -> bytes:
    fields = element_lengths(enc)
    if not fields:
        return _flip(rng, enc)
    data = bytearray(enc.data)
    for _ in range(rng.randint(1, 3)):
        field, size = rng.choice(fields)
        old = int.from_bytes(data[field : field + size], "little")
        new = rng.choice([*_EXTREMES, old + 1, old - 1, old * 2, rng.getrandbits(8 * size)])
        data[field : field + size] = (new % (1 << (8 * size))).to_bytes(size, "little")
    return bytes(data)


Mutation = Callable[[random.Random, Encoded], bytes]
MUTATIONS: dict[str, Mutation] = {
    "flip": _flip,
    "truncate": _truncate,
    "insert": _insert,
    "length": _length,
}
#: Image Pixel module values set to extremes before encoding (rows, columns, frames, bits).
_GEOMETRY = (
    ("Rows", (0, 1, 0xFFFF)),
    ("Columns", (0, 1, 0xFFFF)),
    ("NumberOfFrames", (0, 2, 65535, 2**31 - 1)),
    ("BitsAllocated", (0, 1, 7, 32, 0xFFFF)),
    ("SamplesPerPixel", (0, 3, 0xFFFF)),
    ("PhotometricInterpretation", ("", "PALETTE COLOR", "YBR_FULL_422", "GARBAGE")),
)


def _geometry(rng: random.Random, base: Dataset, key: str) -> bytes:
    ds = fresh(base, key)
    keyword, values = rng.choice(_GEOMETRY)
    setattr(ds, keyword, rng.choice(values))
    return encode(ds).data


@dataclass(frozen=True)
class Mutant:
    """One fuzzed file: its name says the seed, base syntax and mutation."""

    name: str
    data: bytes


def mutants(bases: list[Dataset], count: int, seed: int) -> Iterator[Mutant]:
    """``count`` mutated files, the same ones for the same ``seed`` and bases."""
    names = [*MUTATIONS, "geometry"]
    for index in range(count):
        rng = random.Random(f"{seed}:{index}")
        base = bases[index % len(bases)]
        kind = rng.choice(names)
        syntax = UID(base.file_meta.TransferSyntaxUID).keyword
        key = f"{seed}:{index}"
        if kind == "geometry":
            data = _geometry(rng, base, key)
        else:
            data = MUTATIONS[kind](rng, encode(fresh(base, key)))
        yield Mutant(f"{index:04d}-{syntax}-{kind}.dcm", data)


def write_mutants(folder: Path, bases: list[Dataset], count: int, seed: int) -> list[Path]:
    """Write :func:`mutants` into ``folder``; return the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for mutant in mutants(bases, count, seed):
        path = folder / mutant.name
        path.write_bytes(mutant.data)
        paths.append(path)
    return paths


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A ~1 MB Part 10 DX file whose deflated data set inflates to over ``inflated_bytes``.

    The data set is a valid 1x1 DX header followed by (7FE0,0010) Pixel Data, OB, holding
    ``inflated_bytes`` zeros (rounded up to 16 MiB). Deflate blocks after a full flush are
    self-contained, so one compressed block of zeros is repeated instead of compressing
    gigabytes.
    """
    ds = fresh(radiograph("DX", rows=1, columns=1), f"deflate-bomb:{inflated_bytes}")
    del ds.PixelData
    meta = deepcopy(ds)
    meta.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    plain = encode(ds)
    block = 1 << 24
    blocks = -(-inflated_bytes // block)
    pixel_data = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, blocks * block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(plain.data[plain.body :] + pixel_data)
    head += compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    deflated = encode(meta)
    return deflated.data[: deflated.body] + head + zeros * blocks + compressor.flush()
