"""STOW-RS answers read as outcomes (PS3.18 10.5.3), and the DICOMweb destination's checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from osteoflag.config import parse_settings
from osteoflag.destination_settings import DicomWebDestination
from osteoflag.errors import ConfigError
from osteoflag.pacs.outbound import destination_key
from osteoflag.pacs.stow import StowOutcome, interpret, multipart

UID = "1.2.3.4"


def _stored(uid: str = UID) -> dict[str, Any]:
    return {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}}]}}


def _failed(reason: int | None, uid: str | None = UID) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if uid is not None:
        item["00081155"] = {"vr": "UI", "Value": [uid]}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return {"00081198": {"vr": "SQ", "Value": [item]}}


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (200, None, StowOutcome(True, False, "HTTP 200")),
        (202, _stored(), StowOutcome(True, False, "HTTP 202")),
        (202, [_stored()], StowOutcome(True, False, "HTTP 202")),
        (202, {}, StowOutcome(False, False, "HTTP 202 without the instance as stored")),
        (202, None, StowOutcome(False, False, "HTTP 202 without the instance as stored")),
        (202, _stored("9.9"), StowOutcome(False, False, "HTTP 202 without the instance as stored")),
        (202, _failed(0xA700), StowOutcome(False, False, "HTTP 202, failure 0xA700")),
        (202, [_failed(0xA700)], StowOutcome(False, False, "HTTP 202, failure 0xA700")),
        (200, _failed(0xA700), StowOutcome(False, False, "HTTP 200, failure 0xA700")),
        (409, _failed(0xC000, uid=None), StowOutcome(False, True, "HTTP 409, failure 0xC000")),
        (409, _failed(None), StowOutcome(False, True, "HTTP 409, failure 0xC000")),
        (202, _failed(0xA700, uid="9.9") | _stored(), StowOutcome(True, False, "HTTP 202")),
        (409, None, StowOutcome(False, True, "HTTP 409")),
        (415, None, StowOutcome(False, True, "HTTP 415")),
        (401, None, StowOutcome(False, False, "HTTP 401")),
        (503, "not json", StowOutcome(False, False, "HTTP 503")),
    ],
)
def test_answers_become_outcomes(status: int, payload: Any, expected: StowOutcome) -> None:
    assert interpret(status, payload, UID) == expected


def test_multipart_body_holds_the_file_between_boundaries() -> None:
    body, content_type = multipart(b"DICM-bytes")
    boundary = content_type.rsplit("boundary=", 1)[1]
    assert content_type.startswith('multipart/related; type="application/dicom"')
    assert body.startswith(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
    assert body.endswith(f"DICM-bytes\r\n--{boundary}--\r\n".encode())


def _destination(tmp_path: Path, **table: object) -> DicomWebDestination:
    settings = parse_settings({"destinations": [{"type": "dicomweb", **table}]}, tmp_path)
    (destination,) = settings.destinations
    assert isinstance(destination, DicomWebDestination)
    return destination


def test_dicomweb_destination_keys_by_url_and_resolves_its_ca(tmp_path: Path) -> None:
    destination = _destination(
        tmp_path, url="https://pacs.example/dicom-web", token="t0k", ca_certificates="ca.pem"
    )
    assert destination_key(destination) == "https://pacs.example/dicom-web"
    assert destination.ca_certificates == tmp_path / "ca.pem"
    assert destination.objects == ("sr", "gsps", "summary")


def test_a_table_without_type_is_still_a_dimse_destination(tmp_path: Path) -> None:
    table = {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}
    (destination,) = parse_settings({"destinations": [table]}, tmp_path).destinations
    assert destination.type == "dimse"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "http://pacs.example/dicom-web"}, "loopback"),
        ({"url": "https://u:p@pacs.example/dicom-web"}, "credentials"),
        ({"url": "ftp://pacs.example/x"}, "http"),
        ({"url": "https://pacs.example/x", "username": "u"}, "together"),
        (
            {"url": "https://pacs.example/x", "username": "u", "password": "p", "token": "t"},
            "not both",
        ),
        ({"url": "https://pacs.example/x", "ae_title": "PACS"}, "ae_title"),
    ],
)
def test_bad_dicomweb_destinations_are_config_errors(
    tmp_path: Path, table: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _destination(tmp_path, **table)


def test_unknown_destination_type_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="destinations"):
        parse_settings({"destinations": [{"type": "ftp", "url": "x"}]}, tmp_path)
