"""SR and summary image stay valid for every radiograph kind the listener accepts,
and the model identity comes from a real bundle."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.labels import Label
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity, device_uid
from osteoflag.pacs.gsps import build_gsps
from osteoflag.pacs.sr import build_sr
from osteoflag.pacs.sr_read import read_result
from osteoflag.pacs.summary import build_summary
from testkit.tiny_bundle import build_bundle
from tests.helpers.dicom import MODALITIES, radiograph, set_raw
from tests.sr_fixtures import dciodvfy_errors, make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FRACTURE = Classification(Label.FRACTURE, 0.91)
REGION = Region(peak=(70, 120), box=(40, 90, 110, 170))
MULTI_FRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def _sr_gsps_summary(source: Dataset, folder: Path) -> dict[str, Path]:
    """The SR (with a region), the presentation state and the summary of a flagged
    ``source``, written under ``folder``."""
    built = {
        "sr": build_sr(
            source,
            FRACTURE,
            model=MODEL,
            device_uid=device_uid("OSTEOFLAG"),
            created=CREATED,
            region=REGION,
        ),
        "gsps": build_gsps(source, 0.91, REGION, model=MODEL, created=CREATED),
        "summary": build_summary(source, FRACTURE, model=MODEL, created=CREATED, region=REGION),
    }
    paths = {}
    for kind, dataset in built.items():
        paths[kind] = folder / f"{kind}.dcm"
        dataset.save_as(paths[kind], enforce_file_format=True)
    return paths


@pytest.mark.parametrize("modality", sorted(MODALITIES))
@pytest.mark.parametrize("bits", [8, 12])
def test_sr_and_summary_valid_for_each_source_kind(
    tmp_path: Path, modality: str, bits: int
) -> None:
    source = radiograph(modality=modality, bits=bits)
    result = Classification(Label.NO_FRACTURE, 0.2)
    sr_path, summary_path = tmp_path / "sr.dcm", tmp_path / "summary.dcm"
    build_sr(
        source, result, model=MODEL, device_uid=device_uid("OSTEOFLAG"), created=CREATED
    ).save_as(sr_path, enforce_file_format=True)
    build_summary(source, result, model=MODEL, created=CREATED).save_as(
        summary_path, enforce_file_format=True
    )
    assert dciodvfy_errors(sr_path) == []
    assert dciodvfy_errors(summary_path) == []


def test_a_model_whose_name_and_version_fill_an_lo_keeps_its_results(tmp_path: Path) -> None:
    source = make_dx()
    name, version = "osteoflag-effnetlite0-imagenet-wrist", "7.0.0+site.hospital-north-wing-1"
    model = ModelIdentity(name, version, "0f" * 32, 0.5)  # NAME@VERSION: 69 characters
    built = {
        "sr": build_sr(
            source, FRACTURE, model=model, device_uid=device_uid("OSTEOFLAG"), created=CREATED
        ),
        "gsps": build_gsps(source, 0.91, REGION, model=model, created=CREATED),
        "summary": build_summary(source, FRACTURE, model=model, created=CREATED),
    }
    for kind, dataset in built.items():
        path = tmp_path / f"{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert dcmread(path).SoftwareVersions == [name, version], kind
        assert dciodvfy_errors(path) == [], kind
    assert read_result(built["sr"]).model_version == version


def test_model_identity_from_a_bundle(tmp_path: Path) -> None:
    bundle = load_bundle(build_bundle(tmp_path / "bundle", version="3.1.4", threshold=0.37))
    model = ModelIdentity.from_bundle(bundle)
    assert (model.name, model.version, model.threshold) == ("tiny-test", "3.1.4", 0.37)
    assert len(model.sha256) == 64
    sr = build_sr(
        radiograph(),
        Classification(Label.FRACTURE, 0.9),
        model=model,
        device_uid=device_uid("OSTEOFLAG"),
        created=CREATED,
    )
    assert read_result(sr).model_version == "3.1.4"


@pytest.mark.parametrize("raw", [b"-3", b"abc", b"1\\2", b"0", b"99999999999"])
def test_an_odd_instance_number_keeps_the_result(tmp_path: Path, raw: bytes) -> None:
    source = set_raw(make_dx(), "InstanceNumber", raw)
    for kind, path in _sr_gsps_summary(source, tmp_path).items():
        assert dcmread(path).InstanceNumber == 1, kind
        assert dciodvfy_errors(path) == [], kind


@pytest.mark.parametrize("raw", [b"U", b"m", b"MALE", b"M\\F"])
def test_a_patient_sex_outside_its_enumerated_values_keeps_the_result(
    tmp_path: Path, raw: bytes
) -> None:
    source = set_raw(make_dx(), "PatientSex", raw)
    for kind, path in _sr_gsps_summary(source, tmp_path).items():
        written = dcmread(path)
        assert "PatientSex" in written and written.PatientSex == "", kind  # Type 2: empty
        assert written.PatientID == source.PatientID, kind
        assert dciodvfy_errors(path) == [], kind


def test_every_object_carries_the_patient_and_study_attributes_the_sr_does(
    tmp_path: Path,
) -> None:
    source = make_dx()
    source.StudyDescription = "Handgelenk links"
    source.IssuerOfPatientID = "HOSPITAL-A"
    source.PatientAge = "045Y"
    source.PatientWeight = 61.5
    source.PatientSize = 1.7
    paths = _sr_gsps_summary(source, tmp_path)
    sr = dcmread(paths["sr"])
    for keyword in ("StudyDescription", "IssuerOfPatientID", "PatientAge", "PatientWeight"):
        for kind, path in paths.items():
            assert dcmread(path).get(keyword) == sr.get(keyword) == source.get(keyword), kind
    for kind, path in paths.items():
        assert dciodvfy_errors(path) == [], kind


@pytest.mark.parametrize("keyword", ["ImageLaterality", "Laterality"])
def test_the_sources_side_is_kept_without_a_body_part(tmp_path: Path, keyword: str) -> None:
    source = make_dx(body_part=None)
    del source.ImageLaterality
    setattr(source, keyword, "R")
    paths = _sr_gsps_summary(source, tmp_path)
    for kind in ("gsps", "summary"):
        assert dcmread(paths[kind]).Laterality == "R", kind
        assert dciodvfy_errors(paths[kind]) == [], kind


def _creation_times(paths: dict[str, Path]) -> dict[str, tuple[str, str, str | None]]:
    """Per object: the date and time it says it was made, and its Timezone Offset From UTC."""
    keywords = {
        "sr": ("ContentDate", "ContentTime"),
        "gsps": ("PresentationCreationDate", "PresentationCreationTime"),
        "summary": ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
    }
    times = {}
    for kind, (date, time_of_day) in keywords.items():
        written = dcmread(paths[kind])
        offset = written.get("TimezoneOffsetFromUTC")
        times[kind] = (written[date].value, written[time_of_day].value[:6], offset)
        assert written.SeriesDate == written[date].value, kind
    return times


def test_objects_are_dated_in_the_time_zone_of_the_sources_offset(tmp_path: Path) -> None:
    source = make_dx()
    source.TimezoneOffsetFromUTC = "-0500"  # CREATED is 2026-01-02 03:04:05 UTC
    paths = _sr_gsps_summary(source, tmp_path)
    for kind, made in _creation_times(paths).items():
        assert made == ("20260101", "220405", "-0500"), kind
        assert dciodvfy_errors(paths[kind]) == [], kind


def test_objects_of_a_source_without_an_offset_are_dated_in_local_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "JST-9")  # DICOM times without an offset are local (C.12.1.1.8)
    time.tzset()
    try:
        paths = _sr_gsps_summary(make_dx(), tmp_path)
    finally:
        monkeypatch.undo()
        time.tzset()
    for kind, made in _creation_times(paths).items():
        assert made == ("20260102", "120405", None), kind


def _multi_frame(frames: int) -> Dataset:
    """A Multi-frame Grayscale Word Secondary Capture image of ``frames`` frames."""
    source = make_dx()
    source.SOPClassUID = source.file_meta.MediaStorageSOPClassUID = MULTI_FRAME_WORD_SC
    source.NumberOfFrames = frames
    source.PixelData = source.PixelData * frames
    return source


def _content_references(node: Dataset) -> list[Dataset]:
    """Every image reference of the SR's content tree (IMAGE items, SCOORD sources)."""
    found = list(node.get("ReferencedSOPSequence", []))
    for child in node.get("ContentSequence", []):
        found.extend(_content_references(child))
    return found


def test_a_multi_frame_source_is_referenced_by_its_frame_1(tmp_path: Path) -> None:
    source = _multi_frame(2)
    paths = _sr_gsps_summary(source, tmp_path)
    undetermined = build_sr(
        source,
        Classification(Label.UNDETERMINED, reason="test"),
        model=MODEL,
        device_uid=device_uid("OSTEOFLAG"),
        created=CREATED,
    )
    paths["undetermined"] = tmp_path / "undetermined.dcm"
    undetermined.save_as(paths["undetermined"], enforce_file_format=True)
    for kind in ("sr", "undetermined"):
        references = _content_references(dcmread(paths[kind]))
        assert references, kind
        assert all(item.ReferencedFrameNumber == 1 for item in references), kind
    state = dcmread(paths["gsps"])
    (annotated,) = state.GraphicAnnotationSequence[0].ReferencedImageSequence
    (presented,) = state.ReferencedSeriesSequence[0].ReferencedImageSequence
    assert annotated.ReferencedFrameNumber == 1 and "ReferencedFrameNumber" not in presented
    assert annotated.ReferencedSOPClassUID == presented.ReferencedSOPClassUID == MULTI_FRAME_WORD_SC
    assert state.SoftcopyVOILUTSequence[0].WindowCenter == source.WindowCenter
    assert dcmread(paths["summary"]).SourceImageSequence[0].ReferencedFrameNumber == 1
    for kind, path in paths.items():
        assert dciodvfy_errors(path) == [], kind


@pytest.mark.parametrize("source", [make_dx(), _multi_frame(1)], ids=["DX", "one frame"])
def test_a_single_frame_is_referenced_as_a_whole(tmp_path: Path, source: Dataset) -> None:
    for kind, path in _sr_gsps_summary(source, tmp_path).items():
        assert "(0008,1160)" not in str(dcmread(path)), kind
        assert dciodvfy_errors(path) == [], kind


def test_latin_1_text_without_a_character_set_is_declared_and_kept(tmp_path: Path) -> None:
    source = make_dx()
    del source.SpecificCharacterSet
    name = "Müller^Jörg".encode("latin-1")
    set_raw(source, "PatientName", name)
    for kind, path in _sr_gsps_summary(source, tmp_path).items():
        assert dcmread(path).SpecificCharacterSet == "ISO_IR 100", kind
        assert name in path.read_bytes(), kind  # the bytes as received
        assert dciodvfy_errors(path) == [], kind


def test_over_long_descriptions_are_cut_and_identifiers_kept(tmp_path: Path) -> None:
    source = make_dx()
    source.StudyDescription = "Z" * 70  # LO, 64
    source.AdmittingDiagnosesDescription = "D" * 70  # LO, copied into the state only
    for kind, path in _sr_gsps_summary(source, tmp_path).items():
        assert dcmread(path).StudyDescription == "Z" * 64, kind
        assert dciodvfy_errors(path) == [], kind
    assert dcmread(tmp_path / "sr.dcm").StudyDescription == "Z" * 64
    assert dcmread(tmp_path / "gsps.dcm").AdmittingDiagnosesDescription == "D" * 64
    assert source.StudyDescription == "Z" * 70  # cut in a copy, the source is untouched
    source.AccessionNumber = "X" * 20  # SH, 16: kept, the PACS files the result by it
    for kind, path in _sr_gsps_summary(source, tmp_path).items():
        assert dcmread(path).AccessionNumber == "X" * 20, kind
