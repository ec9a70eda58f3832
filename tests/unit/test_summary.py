"""The summary Secondary Capture: valid IOD, banner, research marking, display pixels."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit

from osteoflag.errors import PixelDataError
from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import display_from_dataset
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity, device_uid
from osteoflag.pacs.picture import BOX_COLOUR, COLOURS, MAX_SIDE, render
from osteoflag.pacs.sr import build_sr
from osteoflag.pacs.summary import build_summary
from tests.sr_fixtures import dciodvfy_errors, make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RESULTS = [
    Classification(Label.FRACTURE, 0.8731),
    Classification(Label.NO_FRACTURE, 0.0123),
    Classification(Label.UNDETERMINED, reason="pixel data shorter than declared"),
]


@pytest.fixture(autouse=True)
def strict_pydicom() -> Iterator[None]:
    """pydicom raises on any invalid value, reading and writing."""
    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.RAISE
    config.settings.writing_validation_mode = config.RAISE
    yield
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: r.label.value)
def test_summary_is_a_valid_secondary_capture(tmp_path: Path, result: Classification) -> None:
    source = make_dx()
    path = tmp_path / "summary.dcm"
    build_summary(source, result, model=MODEL, created=CREATED).save_as(
        path, enforce_file_format=True
    )
    assert dciodvfy_errors(path) == []
    reloaded = pydicom.dcmread(path)
    assert reloaded.SOPClassUID == SECONDARY_CAPTURE
    assert reloaded.Modality == "OT"
    assert reloaded.BurnedInAnnotation == "YES"
    assert reloaded.SeriesDescription.startswith("RESEARCH USE ONLY")
    assert reloaded.StudyInstanceUID == source.StudyInstanceUID
    assert reloaded.PatientID == source.PatientID
    assert reloaded.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reloaded.pixel_array.shape[2] == 3


def test_summary_has_its_own_series_and_a_stable_uid() -> None:
    source = make_dx()
    summary = build_summary(source, RESULTS[0], model=MODEL, created=CREATED)
    again = build_summary(source, RESULTS[0], model=MODEL, created=CREATED)
    sr = build_sr(
        source, RESULTS[0], model=MODEL, device_uid=device_uid("OSTEOFLAG"), created=CREATED
    )
    assert summary.SOPInstanceUID == again.SOPInstanceUID
    assert summary.SeriesInstanceUID not in (sr.SeriesInstanceUID, source.SeriesInstanceUID)
    assert summary.SOPInstanceUID != sr.SOPInstanceUID


def test_banner_sits_above_the_radiograph_in_the_finding_colour() -> None:
    source = make_dx(rows=300, columns=600)
    fracture = build_summary(source, RESULTS[0], model=MODEL, created=CREATED).pixel_array
    negative = build_summary(source, RESULTS[1], model=MODEL, created=CREATED).pixel_array
    assert fracture.shape[0] > 300 and fracture.shape[1] == 600
    corner_red, corner_green = fracture[2, 2], negative[2, 2]
    assert corner_red[0] > corner_red[1]
    assert corner_green[1] > corner_green[0]


def test_a_display_already_decoded_gives_the_same_summary() -> None:
    source = make_dx(rows=300, columns=600)
    decoded = build_summary(source, RESULTS[0], model=MODEL, created=CREATED)
    given = build_summary(
        source, RESULTS[0], model=MODEL, created=CREATED, grey=display_from_dataset(source).grey8()
    )
    assert given.SOPInstanceUID == decoded.SOPInstanceUID
    assert _frame(given) == _frame(decoded)


def test_large_images_are_downscaled_to_a_small_jpeg(tmp_path: Path) -> None:
    source = make_dx(rows=3000, columns=2500)
    summary = build_summary(source, RESULTS[1], model=MODEL, created=CREATED)
    assert max(summary.Rows, summary.Columns) <= MAX_SIDE  # radiograph plus banner
    assert summary.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert summary.LossyImageCompression == "01"
    assert summary.LossyImageCompressionMethod == "ISO_10918_1"
    ratio = float(summary.LossyImageCompressionRatio)
    assert ratio == pytest.approx(summary.Rows * summary.Columns * 3 / len(_frame(summary)), 0.01)
    path = tmp_path / "large.dcm"
    summary.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 1_000_000
    assert dciodvfy_errors(path) == []


def _frame(summary: pydicom.Dataset) -> bytes:
    return next(generate_frames(summary.PixelData, number_of_frames=1))


def test_the_region_and_its_evidence_are_drawn_on_a_flagged_summary() -> None:
    source = make_dx(rows=400, columns=600)
    heat = np.zeros((40, 60), np.float32)
    heat[10:20, 30:40] = 1.0
    region = Region(peak=(350, 150), box=(300, 100, 400, 200), heat=heat)
    plain = build_summary(source, RESULTS[0], model=MODEL, created=CREATED).pixel_array
    pixels = build_summary(
        source, RESULTS[0], model=MODEL, created=CREATED, region=region
    ).pixel_array
    banner = pixels.shape[0] - 400
    box_edge = pixels[banner + 100, 320:380].astype(int)  # the box's top side, in yellow
    assert np.all(np.abs(box_edge - BOX_COLOUR).max(axis=1) < 64)  # JPEG blurs chroma
    hot = pixels[banner + 130, 330].astype(int)  # inside the hot square: tinted red
    assert hot[0] - hot[2] > 60
    cold = pixels[banner + 350, 100].astype(int)  # far from it: grey as before
    assert np.abs(cold - plain[banner + 350, 100].astype(int)).max() < 12


def _run(line: np.ndarray) -> int:
    """How many leading entries of ``line`` are true."""
    return int(np.argmin(line)) if not line.all() else len(line)


def test_a_region_at_the_far_corner_is_outlined_to_the_pictures_edges_on_each_axis() -> None:
    # 3001 x 1999 fits as 1024 x 682: x scaled by 0.34122, y by 0.34117; one scale for both
    # puts the bottom edge at 1999 * 0.34122 = 682.1, a row below the picture
    columns, rows = 3001, 1999
    region = Region(peak=(2850, 1850), box=(2700, 1700, columns - 1, rows - 1))
    pixels = render(np.zeros((rows, columns), np.uint8), ["FRACTURE"], Label.FRACTURE, region)
    banner = _run(np.all(pixels[:, 0] == COLOURS[Label.FRACTURE], axis=1))
    picture = np.all(pixels[banner:] == BOX_COLOUR, axis=2)
    height, width = picture.shape
    assert (width, height) == (1024, 682)
    left, upper = 2700 * width // columns, 1700 * height // rows  # each axis' own scale
    assert picture[:, :left].sum() == 0 and picture[:upper].sum() == 0
    row, column = picture[upper + 6], picture[:, left + 6]  # clear of the peak's cross
    sides = {
        "left": _run(row[left:]),
        "right": _run(row[::-1]),
        "top": _run(column[upper:]),
        "bottom": _run(column[::-1]),
    }
    assert sides["left"] >= 2
    assert sides == dict.fromkeys(sides, sides["left"])  # none cut off by the picture's edge


def test_the_8_bit_display_inverts_monochrome1() -> None:
    source = make_dx(rows=64, columns=64)
    normal = display_from_dataset(source).grey8()
    source.PhotometricInterpretation = "MONOCHROME1"
    inverted = display_from_dataset(source).grey8()
    assert normal.dtype == np.uint8
    assert int(normal[0, 0]) < int(normal[-1, -1])
    assert int(inverted[0, 0]) > int(inverted[-1, -1])


def test_truncated_pixel_data_is_a_pixel_data_error() -> None:
    source = make_dx(rows=64, columns=64)
    source.PixelData = source.PixelData[:100]
    with pytest.raises(PixelDataError, match=r"7FE0,0010"):
        display_from_dataset(source).grey8()
