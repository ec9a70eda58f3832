"""A DICOMweb destination: STOW-RS into a real Orthanc with the DICOMweb plugin.

The objects of a flagged image (SR with region, presentation state, summary image) reach
the source study through the same outbound queue as C-STORE; a refusal (wrong password:
HTTP 401) or an untrusted server certificate counts an attempt and retries, and the same
rows go out once the destination is right. HTTPS goes through a TLS front
(``tests.helpers.proxy``): Debian's Orthanc 1.10 crashes on TLS connections. Time is moved
by ``now``, never slept.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.db.models import Outbound, OutboundState, utcnow
from osteoflag.inference.labels import Label
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import send_pending
from osteoflag.pacs.sr_read import read_result
from testkit.net import free_port
from testkit.wait import wait_for
from tests.helpers.pki import make_certificates
from tests.helpers.proxy import reverse_proxy
from tests.helpers.rows import produce_for
from tests.orthanc_sr import Orthanc
from tests.sr_fixtures import dciodvfy_errors, make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
REGION = Region(peak=(70, 120), box=(40, 90, 110, 170))
USERS = {"osteoflag": "stow-secret"}
WANTED = {
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",
    "1.2.840.10008.5.1.4.1.1.11.1": "gsps",
    "1.2.840.10008.5.1.4.1.1.7": "summary",
}


def _settings(tmp_path: Path, destination: dict[str, object]) -> Settings:
    return parse_settings(
        {
            "storage": {
                "path": str(tmp_path / "var"),
                "database_url": "sqlite:///var/osteoflag.db",
            },
            "sender": {"timeout_seconds": 10.0},
            "destinations": [{"type": "dicomweb", **destination}],
        },
        tmp_path,
    )


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", "OSTEOFLAG", free_port(), dicomweb=True, users=USERS)
    server.start()
    yield server
    server.stop()


def _source_in(orthanc: Orthanc) -> tuple[pydicom.Dataset, str]:
    source = make_dx(body_part="HAND")
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    return source, orthanc.upload(buffer.getvalue())["ParentStudy"]


def _produce(sessions: sessionmaker[Session], settings: Settings, source: pydicom.Dataset) -> None:
    with sessions() as session:
        rows = produce_for(
            session, source, Classification(Label.FRACTURE, 0.87), MODEL, settings, REGION
        )
        session.commit()
    assert sorted(row.kind for row in rows) == ["gsps", "sr", "summary"]


def _arrived(orthanc: Orthanc, study_id: str) -> dict[str, str] | None:
    found = {t["SOPClassUID"]: t["ID"] for t in orthanc.study_instances(study_id)}
    return found if WANTED.keys() <= found.keys() else None


def _rows(sessions: sessionmaker[Session]) -> list[tuple[OutboundState, int, str | None]]:
    with sessions() as session:
        rows = session.scalars(select(Outbound).order_by(Outbound.id))
        return [(row.state, row.attempts, row.last_error) for row in rows]


def test_stow_rs_delivers_sr_gsps_and_summary_into_the_source_study(
    tmp_path: Path, orthanc: Orthanc, sessions: sessionmaker[Session]
) -> None:
    source, study_id = _source_in(orthanc)
    user, password = next(iter(USERS.items()))
    url = f"{orthanc.base_url}/dicom-web"
    settings = _settings(tmp_path, {"url": url, "username": user, "password": password})
    _produce(sessions, settings, source)

    assert send_pending(sessions, settings).sent == 3

    found = wait_for(lambda: _arrived(orthanc, study_id), timeout=30.0)
    assert {state for state, _, _ in _rows(sessions)} == {OutboundState.SENT}
    for sop_class, kind in WANTED.items():
        copy = tmp_path / f"{kind}-from-orthanc.dcm"
        copy.write_bytes(orthanc.file(found[sop_class]))
        assert dciodvfy_errors(copy) == [], kind
    reported = read_result(pydicom.dcmread(tmp_path / "sr-from-orthanc.dcm"))
    assert reported.region == REGION.box
    assert reported.source_sop_instance_uid == source.SOPInstanceUID


def test_refused_credentials_retry_then_the_same_rows_go_out(
    tmp_path: Path, orthanc: Orthanc, sessions: sessionmaker[Session]
) -> None:
    source, study_id = _source_in(orthanc)
    user = next(iter(USERS))
    url = f"{orthanc.base_url}/dicom-web"
    wrong = _settings(tmp_path, {"url": url, "username": user, "password": "wrong"})
    _produce(sessions, wrong, source)

    report = send_pending(sessions, wrong)
    assert (report.sent, report.retried, report.failed) == (0, 3, 0)
    rows = _rows(sessions)
    assert all(state is OutboundState.PENDING and attempts == 1 for state, attempts, _ in rows)
    assert all(error and "HTTP 401" in error for _, _, error in rows)

    right = _settings(tmp_path, {"url": url, "username": user, "password": USERS[user]})
    assert send_pending(sessions, right, now=utcnow() + timedelta(days=1)).sent == 3
    assert wait_for(lambda: _arrived(orthanc, study_id), timeout=30.0)
    assert [attempts for _, attempts, _ in _rows(sessions)] == [2, 2, 2]


def test_https_verifies_the_server_against_the_configured_ca(
    tmp_path: Path, orthanc: Orthanc, sessions: sessionmaker[Session]
) -> None:
    pki = make_certificates(tmp_path / "pki")
    source, study_id = _source_in(orthanc)
    user, password = next(iter(USERS.items()))
    credentials = {"username": user, "password": password}
    with reverse_proxy(orthanc.base_url, certificate=(pki.server_cert, pki.server_key)) as front:
        url = f"{front}/dicom-web"
        untrusted = _settings(
            tmp_path, {"url": url, "ca_certificates": str(pki.rogue_ca), **credentials}
        )
        _produce(sessions, untrusted, source)

        assert send_pending(sessions, untrusted).retried == 3
        assert all(error and "no answer" in error for _, _, error in _rows(sessions))

        trusted = _settings(tmp_path, {"url": url, "ca_certificates": str(pki.ca), **credentials})
        assert send_pending(sessions, trusted, now=utcnow() + timedelta(days=1)).sent == 3
    assert wait_for(lambda: _arrived(orthanc, study_id), timeout=30.0)
