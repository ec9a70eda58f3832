"""Copied values: invalid dates, times and numbers left out, character sets made writable,
library messages stripped of values, log fields bounded."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from osteoflag.inference.region import Region
from osteoflag.logs import MAX_FIELD_CHARS, JSONFormatter
from osteoflag.pacs.derived import ModelIdentity
from osteoflag.pacs.gsps import build_gsps
from osteoflag.pacs.values import (
    attribute_name,
    character_set,
    copied_value,
    instance_number,
    invalid_attributes,
    redact,
)
from tests.helpers.dicom import set_raw
from tests.sr_fixtures import make_dx


def _with(**raw: bytes) -> Dataset:
    ds = Dataset()
    for keyword, value in raw.items():
        set_raw(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("keyword", "raw", "kept"),
    [
        ("PatientBirthDate", b"19450317", True),
        ("PatientBirthDate", b"1945-03-17", False),
        ("PatientBirthDate", b"19451317", False),
        ("StudyTime", b"120000.5", True),
        ("StudyTime", b"12:00:00", False),
        ("PatientWeight", b"70.5", True),
        ("PatientWeight", b"70kg", False),
        ("PatientAge", b"045Y", True),
        ("PatientAge", b"45", False),
        ("PatientName", b"Doe^Jane", True),  # names are copied as received
        ("PatientSex", b"O", True),
        ("PatientSex", b"U", False),  # enumerated values M, F, O only
    ],
)
def test_copied_value_keeps_valid_values_only(keyword: str, raw: bytes, kept: bool) -> None:
    source = _with(**{keyword: raw})
    assert (copied_value(source, keyword) is not None) is kept
    assert invalid_attributes(source, [keyword]) == ([] if kept else [attribute_name(keyword)])


@pytest.mark.parametrize(
    ("keyword", "raw", "copied"),
    [
        ("StudyDescription", b"Z" * 70, "Z" * 64),  # LO: descriptive, cut
        ("AdmittingDiagnosesDescription", b"A" * 60 + b"\\" + b"B" * 70, ["A" * 60, "B" * 64]),
        ("Occupation", b"O" * 20, "O" * 16),  # SH
        ("StudyDescription", b"Z" * 64, "Z" * 64),
        ("AccessionNumber", b"X" * 20, "X" * 20),  # SH, but the PACS files by it
        ("StudyID", b"S" * 20, "S" * 20),
        ("PatientID", b"P" * 70, "P" * 70),
        ("OtherPatientIDs", b"Q" * 70, "Q" * 70),
        ("PatientName", b"A" * 80, "A" * 80),  # names are never cut
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 40 else "",
)
def test_descriptive_text_is_cut_to_its_vr_and_identifiers_are_kept(
    keyword: str, raw: bytes, copied: str | list[str]
) -> None:
    source = _with(**{keyword: raw})
    value = copied_value(source, keyword)
    assert (list(value) if isinstance(copied, list) else str(value)) == copied
    assert invalid_attributes(source, [keyword]) == []


def test_absent_and_empty_values_are_not_invalid() -> None:
    source = _with(PatientBirthDate=b"")
    assert copied_value(source, "PatientBirthDate") is None
    assert copied_value(source, "PatientWeight") is None
    assert invalid_attributes(source, ["PatientBirthDate", "PatientWeight"]) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (b"ISO_IR 6", None),
        (b"ISO_IR 100", "ISO_IR 100"),
        (b"ISO_IR 192", "ISO_IR 192"),
        (b"\\ISO 2022 IR 87", ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
        (b"ISO 2022 IR 6\\ISO 2022 IR 100", ["ISO 2022 IR 6", "ISO 2022 IR 100"]),
        (b"\\ISO 2022 IR 149", "ISO_IR 192"),  # Korean: highdicom does not list it
        (b"KLINGON", "ISO_IR 192"),
        (b"ISO 2022 IR 100", "ISO_IR 192"),
        (b"ISO 2022 IR 87\\ISO 2022 IR 6", "ISO_IR 192"),
        (b"ISO_IR 100\\ISO 2022 IR 87", "ISO_IR 192"),
    ],
)
def test_character_set_is_one_every_writer_accepts(
    raw: bytes | None, expected: str | list[str] | None
) -> None:
    source = Dataset() if raw is None else _with(SpecificCharacterSet=raw)
    assert character_set(source) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 1),
        (b"", 1),
        (b"7", 7),
        (b" 12", 12),
        (b"2147483647", 2147483647),
        (b"2147483648", 1),  # beyond IS
        (b"0", 1),
        (b"-3", 1),  # a valid IS, but not a usable Instance Number
        (b"abc", 1),
        (b"1\\2", 1),
        (b"1.0", 1),
    ],
)
def test_instance_number_is_one_positive_integer_else_1(raw: bytes | None, expected: int) -> None:
    source = Dataset() if raw is None else _with(InstanceNumber=raw)
    assert instance_number(source) == expected


def _no_character_set(**raw: bytes) -> Dataset:
    source = make_dx()
    del source.SpecificCharacterSet
    for keyword, value in raw.items():
        set_raw(source, keyword, value)
    return source


def _in_a_sequence(text: str) -> Dataset:
    source = _no_character_set()
    source.AnatomicRegionSequence[0].CodeMeaning = text
    return source


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (_no_character_set(), None),
        (_no_character_set(PatientName="Müller^Jörg".encode("latin-1")), "ISO_IR 100"),
        (
            _no_character_set(
                SpecificCharacterSet=b"ISO_IR 6", StudyDescription="Épaule".encode("latin-1")
            ),
            "ISO_IR 100",
        ),
        (_in_a_sequence("Handgelenk rechts, ärztlich"), "ISO_IR 100"),
        (_in_a_sequence("腕"), "ISO_IR 192"),  # not from a sender's bytes: Latin-1 cannot hold it
    ],
    ids=["ascii", "latin-1 name", "declared ISO_IR 6", "in a sequence", "beyond latin-1"],
)
def test_text_without_a_character_set_gets_one_when_it_is_not_ascii(
    source: Dataset, expected: str | None
) -> None:
    assert character_set(source) == expected


def test_redact_replaces_values_by_the_attribute_name() -> None:
    source = _with(PatientBirthDate=b"1945-03-17", PatientWeight=b"70kg")
    text = "Unable to convert '1945-03-17' to 'DA'; could not convert string to float: '70kg'"
    redacted = redact(text, source, ["PatientBirthDate", "PatientWeight", "PatientName"])
    assert "1945" not in redacted and "70kg" not in redacted
    assert "<PatientBirthDate>" in redacted and "<PatientWeight>" in redacted


def test_log_fields_are_capped() -> None:
    record = logging.makeLogRecord(
        {"msg": "x" * 100_000, "peer": "A" * 121_000, "attributes": ["B" * 5000]}
    )
    line = JSONFormatter().format(record)
    entry = json.loads(line)
    assert len(line) < 4 * MAX_FIELD_CHARS
    assert entry["message"].endswith(f"[{100_000 - MAX_FIELD_CHARS} more characters]")
    assert len(entry["peer"]) < MAX_FIELD_CHARS + 40
    assert len(entry["attributes"][0]) < MAX_FIELD_CHARS + 40


def test_presentation_state_of_a_sloppy_source_is_written_without_its_invalid_values(
    tmp_path: Path,
) -> None:
    source = make_dx(body_part="HAND")
    set_raw(source, "PatientBirthDate", b"1945-03-17")
    set_raw(source, "PatientWeight", b"70kg")
    set_raw(source, "SpecificCharacterSet", b"\\ISO 2022 IR 87")
    model = ModelIdentity("m", "1", "0f" * 32, 0.5)
    region = Region(peak=(70, 120), box=(40, 90, 110, 170))
    state = build_gsps(source, 0.9, region, model=model, created=datetime(2026, 1, 2, tzinfo=UTC))
    path = tmp_path / "gsps.dcm"
    state.save_as(path, enforce_file_format=True)
    reloaded = dcmread(path)
    assert reloaded.PatientBirthDate == ""
    assert reloaded.PatientID == source.PatientID
    assert reloaded.SpecificCharacterSet == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    # The value and its DA-normalised form; a bare "1945" also occurs inside random UIDs.
    written = path.read_bytes()
    assert b"1945-03-17" not in written and b"19450317" not in written
