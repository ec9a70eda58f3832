"""The decode budget: sizes are checked from headers (the data set's, and a compressed
frame's codestream), before anything is decoded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless

from osteoflag.errors import PixelDataError
from osteoflag.inference.budget import BYTES_PER_PIXEL, DEFAULT_BUDGET, DecodeBudget
from osteoflag.inference.dicomfile import read_instance
from osteoflag.inference.pixels import display_from_dataset, load_display
from testkit.inference_data import dataset, dcmtk, radiograph, save
from tests.helpers.bombs import png_bomb


def test_budget_sizes() -> None:
    budget = DecodeBudget(512)
    assert budget.max_dataset_bytes == 512 * 2**20
    assert budget.max_pixels == 512 * 2**20 // BYTES_PER_PIXEL
    assert DEFAULT_BUDGET.max_pixels > 4300 * 4300  # a 43 x 43 cm detector at 100 um
    with pytest.raises(ValueError, match="at least 1 MB"):
        DecodeBudget(0)


def test_a_png_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(12000, 14000))
    assert path.stat().st_size < 400_000
    with pytest.raises(PixelDataError, match=r"image too large \(12000x14000\)"):
        load_display(path)  # the memory it would take is measured in the acceptance ring


def test_a_dicom_over_the_budget_is_refused_naming_it(tmp_path: Path) -> None:
    ds = dataset(radiograph(rows=1024, columns=1024), bits_stored=12)
    small = DecodeBudget(16)  # 16 MB: 699050 pixels
    with pytest.raises(PixelDataError, match=r"1024x1024x1 .* decode budget of 16 MB"):
        display_from_dataset(ds, small)
    with pytest.raises(PixelDataError, match="decode budget of 16 MB"):
        load_display(save(ds, tmp_path / "big.dcm"), small)
    assert display_from_dataset(ds).pixels.shape == (1024, 1024)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=50)
    return buffer.getvalue()


def _declaring(ds: Dataset, rows: int, columns: int) -> Dataset:
    """``ds``, its header now claiming ``rows`` x ``columns`` for the same codestream."""
    ds.Rows, ds.Columns = rows, columns
    return ds


def _encoded(tmp_path: Path, syntax: str, pixels: np.ndarray) -> Dataset:
    """``pixels`` (8-bit grey) encoded in ``syntax`` by pydicom or DCMTK."""
    plain = save(dataset(pixels, bits_allocated=8), tmp_path / "plain.dcm")
    if syntax == JPEG2000Lossless:
        ds = dcmread(plain)
        ds.compress(JPEG2000Lossless)
        return ds
    tool, option = {JPEGBaseline8Bit: ("dcmcjpeg", "+eb"), JPEGLSLossless: ("dcmcjpls", "+el")}[
        syntax
    ]
    dcmtk(tool, option, plain, tmp_path / "encoded.dcm")
    return dcmread(tmp_path / "encoded.dcm")


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless])
def test_a_codestream_larger_than_rows_and_columns_is_refused_before_decoding(
    tmp_path: Path, syntax: str
) -> None:
    ds = _encoded(tmp_path, syntax, radiograph(rows=300, columns=260, maximum=255))
    assert display_from_dataset(ds).pixels.shape == (300, 260)
    with pytest.raises(PixelDataError, match=r"declare 64x48x1, but frame 1's .* is 300x260x1"):
        display_from_dataset(_declaring(ds, 64, 48))


def test_a_codestream_with_more_components_than_samples_per_pixel_is_refused() -> None:
    ds = dataset(radiograph(rows=64, columns=48, maximum=255), bits_allocated=8)
    ds.PixelData = encapsulate([_jpeg(np.zeros((64, 48, 3)))])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    with pytest.raises(PixelDataError, match=r"\(0028,0002\) .* is 64x48x3"):
        display_from_dataset(ds)


def test_a_deferred_multiframe_bomb_is_refused_from_its_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(1200, 1000))
    frames = [_jpeg(noise), _jpeg(noise[::-1])]
    ds = dataset(radiograph(rows=128, columns=128, maximum=255), bits_allocated=8)
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = save(ds, tmp_path / "bomb.dcm")
    with pytest.raises(PixelDataError, match=r"bomb\.dcm: .* is 1200x1000x1"):
        load_display(path, DecodeBudget(16))
    deferred = read_instance(path)
    with pytest.raises(PixelDataError, match="is 1200x1000x1"):
        display_from_dataset(deferred, DecodeBudget(16))
    pixel_data = deferred.get_item(0x7FE00010, keep_deferred=True)
    assert pixel_data is not None and pixel_data.value is None  # still on disk, never loaded


def _jp2(codestream: bytes, extended: bool) -> bytes:
    """``codestream`` in a JP2 file (ISO/IEC 15444-1 Annex I), which PS3.5 A.4.4 forbids."""
    file_type = (20).to_bytes(4, "big") + b"ftypjp2 " + bytes(4) + b"jp2 "
    if extended:  # XLBox: length 1, then a 64-bit length
        box = (1).to_bytes(4, "big") + b"jp2c" + (16 + len(codestream)).to_bytes(8, "big")
    else:
        box = (8 + len(codestream)).to_bytes(4, "big") + b"jp2c"
    return b"\x00\x00\x00\x0cjP  \r\n\x87\n" + file_type + box + codestream


@pytest.mark.parametrize("extended", [False, True])
def test_a_jp2_wrapped_codestream_is_checked_too(tmp_path: Path, extended: bool) -> None:
    ds = _encoded(tmp_path, JPEG2000Lossless, radiograph(rows=300, columns=260, maximum=255))
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([_jp2(codestream, extended)])
    with pytest.raises(PixelDataError, match=r"is 300x260x1"):
        display_from_dataset(_declaring(ds, 64, 48))


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEG2000Lossless])
def test_a_codestream_without_a_readable_header_is_refused(syntax: str) -> None:
    ds = dataset(radiograph(rows=64, columns=48, maximum=255), bits_allocated=8)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xff" + bytes(60)])
    ds.file_meta.TransferSyntaxUID = syntax
    with pytest.raises(PixelDataError, match=r"\(7FE0,0010\) Pixel Data: frame 1 has no readable"):
        display_from_dataset(ds)


def test_a_header_behind_megabytes_of_other_segments_is_still_found() -> None:
    noise = np.random.default_rng(1).integers(0, 256, size=(1200, 1000))
    jpeg = _jpeg(noise)
    padding = b"".join(b"\xff\xef" + (65535).to_bytes(2, "big") + bytes(65533) for _ in range(20))
    stream = jpeg[:2] + padding + jpeg[2:]  # 1.3 MB of APP15 between SOI and the frame header
    stream += bytes(len(stream) % 2)  # fragments are of even length
    quarter = len(stream) // 8 * 2  # four fragments (and a short fifth), all even
    fragments = [stream[start : start + quarter] for start in range(0, len(stream), quarter)]
    ds = dataset(radiograph(rows=128, columns=128, maximum=255), bits_allocated=8)
    ds.PixelData = encapsulate(fragments)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    with pytest.raises(PixelDataError, match=r"is 1200x1000x1"):
        display_from_dataset(ds)
