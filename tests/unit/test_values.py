"""Copied values: invalid dates, times and numbers left out, character sets made writable,
library messages stripped of values, log fields bounded."""

from __future__ import annotations

import json
import logging

import pytest
from pydicom.dataset import Dataset

from osteoflag.logs import MAX_FIELD_CHARS, JSONFormatter
from osteoflag.pacs.values import (
    attribute_name,
    character_set,
    copied_value,
    invalid_attributes,
    redact,
)
from tests.helpers.dicom import set_raw


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
    ],
)
def test_copied_value_keeps_valid_values_only(keyword: str, raw: bytes, kept: bool) -> None:
    source = _with(**{keyword: raw})
    assert (copied_value(source, keyword) is not None) is kept
    assert invalid_attributes(source, [keyword]) == ([] if kept else [attribute_name(keyword)])


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
