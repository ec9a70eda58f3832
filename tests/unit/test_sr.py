"""The result SR: content, research marking, UIDs, and round trips through pydicom,
highdicom, dciodvfy and dsrdump."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset

import osteoflag
from osteoflag.config import SRClass
from osteoflag.errors import PermanentError
from osteoflag.inference.region import Region
from osteoflag.pacs import codes
from osteoflag.pacs.derived import (
    RESEARCH_STATEMENT,
    Classification,
    Label,
    ModelIdentity,
    device_uid,
)
from osteoflag.pacs.sr import build_sr
from osteoflag.pacs.sr_read import read_result
from tests.sr_fixtures import dciodvfy_errors, make_dx, require_tool

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
REGION = Region(peak=(70, 120), box=(40, 90, 110, 170))


pytestmark = pytest.mark.usefixtures("strict_pydicom")


def _sr(
    source: Dataset,
    result: Classification,
    model: ModelIdentity = MODEL,
    *,
    region: Region | None = None,
    sr_class: SRClass = SRClass.COMPREHENSIVE_3D,
) -> Dataset:
    return build_sr(
        source,
        result,
        model=model,
        device_uid=device_uid("OSTEOFLAG"),
        created=CREATED,
        region=region,
        sr_class=sr_class,
    )


def _save_and_reload(dataset: Dataset, path: Path) -> Dataset:
    dataset.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


RESULTS = [
    Classification(Label.FRACTURE, 0.8731),
    Classification(Label.NO_FRACTURE, 0.0123),
    Classification(Label.UNDETERMINED, reason="pixel data shorter than declared"),
]
# Every form the SR takes: a flagged image with and without a region, the other results.
CASES = [
    pytest.param(RESULTS[0], REGION, id="fracture-region"),
    pytest.param(RESULTS[0], None, id="fracture-no-region"),
    pytest.param(RESULTS[1], None, id="no_fracture"),
    pytest.param(RESULTS[2], None, id="undetermined"),
]
SR_CLASSES = [
    pytest.param(SRClass.COMPREHENSIVE_3D, COMPREHENSIVE_3D_SR, id="3d"),
    pytest.param(SRClass.COMPREHENSIVE, COMPREHENSIVE_SR, id="comprehensive"),
]


@pytest.mark.parametrize(("sr_class", "sop_class_uid"), SR_CLASSES)
@pytest.mark.parametrize(("result", "region"), CASES)
def test_round_trip_through_file_highdicom_and_dciodvfy(
    tmp_path: Path,
    result: Classification,
    region: Region | None,
    sr_class: SRClass,
    sop_class_uid: str,
) -> None:
    source = make_dx()
    built = _sr(source, result, region=region, sr_class=sr_class)
    reloaded = _save_and_reload(built, tmp_path / "sr.dcm")

    parsed = read_result(hd.sr.srread(tmp_path / "sr.dcm"))
    assert reloaded.SOPClassUID == sop_class_uid
    assert parsed.label is result.label
    assert parsed.region == (REGION.box if region is not None else None)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert parsed.probability == (pytest.approx(result.probability) if result.probability else None)
    assert parsed.threshold == pytest.approx(MODEL.threshold)
    assert (parsed.model_name, parsed.model_version) == (MODEL.name, MODEL.version)
    assert parsed.source_sop_instance_uid == source.SOPInstanceUID
    assert parsed.source_sop_class_uid == source.SOPClassUID
    assert parsed.reason == result.reason


def test_dciodvfy_clean_when_source_lacks_optional_attributes(tmp_path: Path) -> None:
    source = make_dx(body_part=None)
    for keyword in ("AccessionNumber", "StudyID", "PatientBirthDate", "ReferringPhysicianName"):
        delattr(source, keyword)
    path = tmp_path / "sr.dcm"
    _sr(source, RESULTS[0]).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_dsrdump_reads_the_tree(tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    _sr(make_dx(), RESULTS[0], region=REGION).save_as(path, enforce_file_format=True)
    run = subprocess.run(
        [require_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Fracture of bone" in run.stdout
    assert "Certainty of Finding" in run.stdout
    assert '"Present"' in run.stdout
    assert "SCOORD" in run.stdout and "POLYLINE" in run.stdout


def test_a_reason_quoting_a_non_ascii_value_stays_readable(tmp_path: Path) -> None:
    source = make_dx()
    del source.SpecificCharacterSet  # the SR gets none either: all else is ASCII
    reason = "(0018,0015) Body Part Examined 'HÄND' is not in the allowlist ['WRIST']"
    path = tmp_path / "sr.dcm"
    _sr(source, Classification(Label.UNDETERMINED, reason=reason)).save_as(
        path, enforce_file_format=True
    )
    assert "SpecificCharacterSet" not in pydicom.dcmread(path)
    assert read_result(hd.sr.srread(path)).reason == reason.replace("Ä", "\\xc4")
    assert dciodvfy_errors(path) == []
    run = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_research_only_marking_everywhere() -> None:
    sr = _sr(make_dx(), RESULTS[0])
    assert sr.SeriesDescription.startswith("RESEARCH USE ONLY")
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.ClinicalTrialSeriesDescription == RESEARCH_STATEMENT
    assert "ClinicalTrialCoordinatingCenterName" in sr
    texts = [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
    assert RESEARCH_STATEMENT in texts
    observer_names = [
        item.TextValue
        for item in sr.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121013"
    ]
    assert observer_names and "RESEARCH USE ONLY" in observer_names[0]


def test_patient_and_study_copied_new_sr_series() -> None:
    source = make_dx()
    sr = _sr(source, RESULTS[1])
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
    ):
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.Modality == "SR"
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID


def test_contributing_equipment_names_osteoflag_and_version() -> None:
    sr = _sr(make_dx(), RESULTS[0])
    equipment = [
        item for item in sr.ContributingEquipmentSequence if item.Manufacturer == "osteoflag"
    ]
    assert len(equipment) == 1
    assert osteoflag.__version__ in str(equipment[0].SoftwareVersions)


def test_uids_are_deterministic_per_source_and_model_version() -> None:
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    first, second = (
        make_dx(study_uid=study, series_uid=series),
        make_dx(study_uid=study, series_uid=series),
    )
    a, again = _sr(first, RESULTS[0]), _sr(first, RESULTS[1])
    b = _sr(second, RESULTS[0])
    other_model = _sr(first, RESULTS[0], ModelIdentity(MODEL.name, "1.3.0", MODEL.sha256, 0.5))

    assert a.SOPInstanceUID == again.SOPInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert other_model.SeriesInstanceUID != a.SeriesInstanceUID
    assert other_model.SOPInstanceUID != a.SOPInstanceUID


def test_each_sr_class_has_its_own_deterministic_uids() -> None:
    source = make_dx()
    three_d = _sr(source, RESULTS[0])
    plain, again = (_sr(source, RESULTS[0], sr_class=SRClass.COMPREHENSIVE) for _ in range(2))
    assert plain.SOPInstanceUID == again.SOPInstanceUID
    assert plain.SOPInstanceUID != three_d.SOPInstanceUID
    assert plain.SeriesInstanceUID != three_d.SeriesInstanceUID


def test_finding_site_from_body_part_and_absent_when_unmapped() -> None:
    mapped = read_content_codes(_sr(make_dx(body_part="WRIST"), RESULTS[0]))
    unmapped = read_content_codes(_sr(make_dx(body_part="BRAIN"), RESULTS[0]))
    assert codes.finding_site("WRIST") in mapped
    assert all(code not in unmapped for code in codes.BODY_PART_SITES.values())


def read_content_codes(sr: Dataset) -> list[pydicom.sr.coding.Code]:
    """Every coded value anywhere in the content tree."""
    found: list[pydicom.sr.coding.Code] = []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.ValueType == "CODE":
                code = item.ConceptCodeSequence[0]
                found.append(
                    pydicom.sr.coding.Code(
                        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning
                    )
                )
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": Label.FRACTURE, "probability": 1.5}, "outside"),
        ({"label": Label.FRACTURE, "probability": float("nan")}, "finite"),
        ({"label": Label.UNDETERMINED}, "reason"),
    ],
)
def test_classification_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Classification(**kwargs)  # type: ignore[arg-type]


def test_missing_source_uid_is_a_permanent_error_naming_the_tag() -> None:
    source = make_dx()
    del source.SeriesInstanceUID
    with pytest.raises(PermanentError, match=r"\(0020,000E\)"):
        _sr(source, RESULTS[0])
