"""The presentation state of a flagged image: valid (dciodvfy), on the source, the box and
the research-only text on its own layer, the source's windowing kept, UIDs deterministic."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from osteoflag.errors import PermanentError
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import RESEARCH_STATEMENT, ModelIdentity
from osteoflag.pacs.gsps import build_gsps, text_box
from tests.sr_fixtures import dciodvfy_errors, make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
REGION = Region(peak=(70, 120), box=(40, 90, 110, 170))
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
CR = "1.2.840.10008.5.1.4.1.1.1"


pytestmark = pytest.mark.usefixtures("strict_pydicom")


def _gsps(source: Dataset, region: Region = REGION, probability: float = 0.873) -> Dataset:
    return build_gsps(
        source, probability, region, model=MODEL, created=datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    )


def _monochrome1() -> Dataset:
    source = make_dx(body_part="HAND")
    source.PhotometricInterpretation = "MONOCHROME1"
    return source


@pytest.mark.parametrize("source", [make_dx(), _monochrome1(), make_dx(body_part=None)])
def test_dciodvfy_reports_no_errors_and_strict_round_trip(tmp_path: Path, source: Dataset) -> None:
    path = tmp_path / "gsps.dcm"
    _gsps(source).save_as(path, enforce_file_format=True)
    reloaded = pydicom.dcmread(path)
    assert reloaded.SOPClassUID == GSPS
    assert dciodvfy_errors(path) == []


def test_source_without_type_2_patient_and_study_attributes(tmp_path: Path) -> None:
    source = make_dx()
    for keyword in ("PatientName", "PatientBirthDate", "StudyID", "AccessionNumber", "StudyTime"):
        delattr(source, keyword)
    path = tmp_path / "gsps.dcm"
    _gsps(source).save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).PatientName == ""
    assert dciodvfy_errors(path) == []


def test_box_and_text_on_the_source_image_in_the_same_study() -> None:
    source = make_dx()
    state = _gsps(source)

    assert (state.Modality, state.StudyInstanceUID) == ("PR", source.StudyInstanceUID)
    assert state.PatientID == source.PatientID
    assert state.SeriesInstanceUID != source.SeriesInstanceUID
    (series,) = state.ReferencedSeriesSequence
    (image,) = series.ReferencedImageSequence
    assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (annotation,) = state.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert annotation.GraphicLayer == state.GraphicLayerSequence[0].GraphicLayer
    (box,) = annotation.GraphicObjectSequence
    assert (box.GraphicType, box.GraphicAnnotationUnits) == ("POLYLINE", "PIXEL")
    assert list(box.GraphicData) == [40, 90, 111, 90, 111, 171, 40, 171, 40, 90]
    (text,) = annotation.TextObjectSequence
    assert text.UnformattedTextValue == "RESEARCH USE ONLY - fracture suspected 87%"
    assert state.SoftcopyVOILUTSequence[0].WindowCenter == source.WindowCenter
    assert state.PresentationLUTShape == "IDENTITY"
    assert state.SeriesDescription.startswith("RESEARCH USE ONLY")
    assert state.ClinicalTrialSeriesDescription == RESEARCH_STATEMENT


def test_monochrome1_source_keeps_its_polarity() -> None:
    assert _gsps(_monochrome1()).PresentationLUTShape == "INVERSE"


def test_uids_are_deterministic_per_source_and_model_version() -> None:
    source = make_dx()
    first, again, other = _gsps(source), _gsps(source, probability=0.5), _gsps(make_dx())
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SOPInstanceUID != other.SOPInstanceUID


@pytest.mark.parametrize(
    "region",
    [
        REGION,
        Region(peak=(5, 2), box=(0, 0, 199, 30)),
        Region(peak=(10, 250), box=(0, 240, 10, 255)),
    ],
)
def test_text_stays_inside_the_image(region: Region) -> None:
    left, top, right, bottom = text_box(region, rows=256, columns=200)
    assert 0 <= left < right <= 200 and 0 <= top < bottom <= 256


@pytest.mark.parametrize(("rows", "columns"), [(300, 1), (1, 300)])
def test_a_one_pixel_wide_image_gets_its_text_inside_it(rows: int, columns: int) -> None:
    region = Region(peak=(0, 0), box=(0, 0, min(columns, 20) - 1, min(rows, 20) - 1))
    state = _gsps(make_dx(rows=rows, columns=columns), region)
    (text,) = state.GraphicAnnotationSequence[0].TextObjectSequence
    left, top = text.BoundingBoxTopLeftHandCorner
    right, bottom = text.BoundingBoxBottomRightHandCorner
    assert 0 <= left < right <= columns and 0 <= top < bottom <= rows


def test_region_outside_the_image_is_a_permanent_error_naming_the_source() -> None:
    source = make_dx(rows=100, columns=100)
    with pytest.raises(PermanentError, match=source.SOPInstanceUID):
        _gsps(source, Region(peak=(50, 50), box=(10, 10, 150, 60)))


def test_region_on_the_last_pixels_is_outlined_to_the_image_edge(tmp_path: Path) -> None:
    source = make_dx(rows=256, columns=200)
    state = _gsps(source, Region(peak=(195, 250), box=(180, 240, 199, 255)))
    (box,) = state.GraphicAnnotationSequence[0].GraphicObjectSequence
    assert list(box.GraphicData) == [180, 240, 200, 240, 200, 256, 180, 256, 180, 240]
    path = tmp_path / "gsps.dcm"
    state.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_a_box_naming_a_pixel_past_the_last_column_is_refused() -> None:
    source = make_dx(rows=256, columns=200)
    with pytest.raises(PermanentError, match="Columns 200"):
        _gsps(source, Region(peak=(190, 20), box=(180, 10, 200, 30)))


@pytest.mark.parametrize(
    ("keyword", "value", "ratio"),
    [
        ("ImagerPixelSpacing", [0.2, 0.1], [2, 1]),
        ("PixelSpacing", [0.15, 0.1], [3, 2]),
        ("PixelAspectRatio", [1, 2], [1, 2]),
        ("ImagerPixelSpacing", [0.139, 0.139], [1, 1]),
        ("ImagerPixelSpacing", [0.0, 0.1], [1, 1]),
        (None, None, [1, 1]),
    ],
)
def test_displayed_area_keeps_the_source_pixels_shape(
    tmp_path: Path, keyword: str | None, value: list[float] | None, ratio: list[int]
) -> None:
    """PS3.3 C.10.4: the state's Presentation Pixel Aspect Ratio replaces the image's when
    it is applied, so non-square pixels must not be declared square."""
    source = make_dx(rows=100, columns=200)
    for name in ("PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio"):
        if name in source:
            delattr(source, name)
    if keyword is not None:
        setattr(source, keyword, value)
    state = _gsps(source, Region(peak=(100, 50), box=(90, 40, 110, 60)))
    (area,) = state.DisplayedAreaSelectionSequence
    assert [int(v) for v in area.PresentationPixelAspectRatio] == ratio
    path = tmp_path / "gsps.dcm"
    state.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_a_voi_lut_held_as_numbers_or_words_is_kept(tmp_path: Path, vr: str) -> None:
    table = np.arange(0, 65536, 16, dtype=np.uint16)
    source = make_dx()
    del source.WindowCenter, source.WindowWidth
    lut = Dataset()
    lut.LUTDescriptor = [len(table), 0, 16]
    lut.add_new(0x00283006, vr, table.tobytes() if vr == "OW" else table.tolist())
    source.VOILUTSequence = [lut]
    stored = tmp_path / "source.dcm"
    source.save_as(stored, enforce_file_format=True)  # Explicit VR: LUT Data read back as vr
    state = _gsps(pydicom.dcmread(stored))
    path = tmp_path / "gsps.dcm"
    state.save_as(path, enforce_file_format=True)
    (copied,) = pydicom.dcmread(path).SoftcopyVOILUTSequence[0].VOILUTSequence
    assert np.array_equal(np.frombuffer(copied.LUTData, np.uint16), table)
    assert copied.LUTDescriptor == [len(table), 0, 16]
    assert dciodvfy_errors(path) == []


def test_a_modality_lut_sequence_is_kept_under_the_window(tmp_path: Path) -> None:
    table = np.arange(4096, dtype=np.uint16) * 16  # stored 0..4095 to 0..65520
    source = make_dx()
    source.SOPClassUID = source.file_meta.MediaStorageSOPClassUID = CR
    source.Modality = "CR"
    del source.RescaleSlope, source.RescaleIntercept, source.RescaleType
    lut = Dataset()
    lut.LUTDescriptor = [len(table), 0, 16]
    lut.ModalityLUTType = "US"
    lut.add_new(0x00283006, "OW", table.tobytes())
    source.ModalityLUTSequence = [lut]
    source.WindowCenter, source.WindowWidth = 32000, 64000  # in the LUT's output
    stored = tmp_path / "source.dcm"
    source.save_as(stored, enforce_file_format=True)
    path = tmp_path / "gsps.dcm"
    _gsps(pydicom.dcmread(stored)).save_as(path, enforce_file_format=True)
    state = pydicom.dcmread(path)
    (copied,) = state.ModalityLUTSequence
    assert np.array_equal(np.frombuffer(copied.LUTData, np.uint16), table)
    assert (copied.LUTDescriptor, copied.ModalityLUTType) == ([4096, 0, 16], "US")
    assert state.SoftcopyVOILUTSequence[0].WindowCenter == 32000
    assert dciodvfy_errors(path) == []


def _window(**window: object) -> Dataset:
    source = make_dx()
    del source.WindowCenter, source.WindowWidth
    for keyword, value in window.items():
        setattr(source, keyword, value)
    return source


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (_window(WindowCenter=1500), None),  # no width: the pipeline stretches min to max
        (_window(WindowWidth=3000), None),
        (_window(WindowCenter=1500, WindowWidth=[3000, 2000]), (1500, 3000)),  # the first
        (_window(WindowCenter=[1500, 900], WindowWidth=[3000, 800]), ([1500, 900], [3000, 800])),
    ],
    ids=["center only", "width only", "counts differ", "two windows"],
)
def test_the_window_is_the_one_the_summary_shows(
    tmp_path: Path, source: Dataset, expected: tuple[object, object] | None
) -> None:
    before = str(source)
    path = tmp_path / "gsps.dcm"
    _gsps(source).save_as(path, enforce_file_format=True)
    voi = pydicom.dcmread(path).get("SoftcopyVOILUTSequence")
    if expected is None:
        assert voi is None
    else:
        assert (voi[0].WindowCenter, voi[0].WindowWidth) == expected
    assert str(source) == before  # the source's own elements are left alone
    assert dciodvfy_errors(path) == []
