"""Delivery over DICOM TLS to DCMTK ``storescp +tls`` that requires our client certificate."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.daemon.roles import Role
from osteoflag.daemon.service import Daemon
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Outbound, OutboundState
from osteoflag.destination_settings import DicomWebDestination
from osteoflag.errors import ConfigError
from osteoflag.pacs.sender import send_pending
from testkit.net import free_port, port_open
from testkit.wait import wait_for
from tests.helpers.pki import Certificates, make_certificates
from tests.helpers.rows import produce_for
from tests.integration.test_sender import FRACTURE, MODEL
from tests.sr_fixtures import make_dx, require_tool


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def storescp_tls(tmp_path: Path, certificates: Certificates) -> Iterator[tuple[int, Path]]:
    """storescp on a TLS-only port, requiring a client certificate signed by our CA."""
    tool = require_tool("storescp")
    port, received = free_port(), tmp_path / "received"
    received.mkdir()
    tls = ["+tls", certificates.server_key, certificates.server_cert, "+cf", certificates.ca]
    process = subprocess.Popen(
        [tool, *map(str, tls), "-rc", "--aetitle", "PACS", "-od", str(received), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), timeout=10.0)
        yield port, received
    finally:
        process.terminate()
        process.wait(timeout=10)


def _settings(tmp_path: Path, port: int, tls: dict[str, Any]) -> Settings:
    destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": port, "tls": tls}
    return parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "database_url": "sqlite:///var/db.sqlite"},
            "sender": {"timeout_seconds": 5.0},
            "destinations": [destination],
        },
        tmp_path,
    )


def _sessions_with_result(settings: Settings) -> tuple[sessionmaker[Session], set[str]]:
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    source = make_dx()
    with sessions() as session:
        rows = produce_for(session, source, FRACTURE, MODEL, settings)
        session.commit()
        return sessions, {row.sop_instance_uid for row in rows}


def test_results_go_out_over_tls_with_our_client_certificate(
    tmp_path: Path, certificates: Certificates, storescp_tls: tuple[int, Path]
) -> None:
    port, received = storescp_tls
    tls = {
        "ca_certificates": str(certificates.ca),
        "certificate": str(certificates.client_cert),
        "private_key": str(certificates.client_key),
    }
    settings = _settings(tmp_path, port, tls)
    sessions, produced = _sessions_with_result(settings)
    assert send_pending(sessions, settings).sent == len(produced) == 2
    stored = {str(pydicom.dcmread(path).SOPInstanceUID) for path in received.iterdir()}
    assert stored == produced


def test_untrusted_server_certificate_is_not_sent_to(
    tmp_path: Path, certificates: Certificates, storescp_tls: tuple[int, Path]
) -> None:
    port, received = storescp_tls
    tls = {
        "ca_certificates": str(certificates.rogue_ca),  # does not vouch for the server
        "certificate": str(certificates.client_cert),
        "private_key": str(certificates.client_key),
    }
    settings = _settings(tmp_path, port, tls)
    sessions, _ = _sessions_with_result(settings)
    report = send_pending(sessions, settings)
    assert report.sent == 0
    assert list(received.iterdir()) == []
    with sessions() as session:
        errors = {row.last_error or "" for row in session.scalars(select(Outbound))}
    assert errors and all("TLS failed: " in error and "verify failed" in error for error in errors)


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_a_destination_certificate_that_cannot_be_read_stops_serve_at_start(
    tmp_path: Path, certificates: Certificates, kind: str
) -> None:
    """Found at start, naming the key and the file, instead of by every sender run."""
    missing = tmp_path / "no-such-ca.pem"
    if kind == "dimse":
        settings = _settings(tmp_path, free_port(), {"ca_certificates": str(missing)})
        key = "destinations.tls.ca_certificates"
    else:
        settings = _settings(tmp_path, free_port(), {"ca_certificates": str(certificates.ca)})
        web = {"type": "dicomweb", "url": "https://pacs.example/dicom-web"}
        destination = DicomWebDestination(**web, ca_certificates=missing)
        settings = settings.model_copy(update={"destinations": (destination,)})
        key = "destinations.ca_certificates"
    with pytest.raises(ConfigError, match=f"{key}.*{missing}"):
        Daemon(settings, Role.SENDER)


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_a_certificate_gone_after_start_is_recorded_on_the_rows_that_wait(
    tmp_path: Path, certificates: Certificates, kind: str
) -> None:
    """A CA file rotated away while serving: each run's objects wait for their next attempt
    with the error naming the file, instead of the run raising with them still claimed."""
    ca = tmp_path / "rotated-ca.pem"
    shutil.copy(certificates.ca, ca)
    settings = _settings(tmp_path, free_port(), {"ca_certificates": str(ca)})
    if kind == "dicomweb":
        web = {"type": "dicomweb", "url": "https://pacs.example/dicom-web"}
        destination = DicomWebDestination(**web, ca_certificates=ca)
        settings = settings.model_copy(update={"destinations": (destination,)})
    Daemon(settings, Role.SENDER)  # the file is there at start
    sessions, produced = _sessions_with_result(settings)
    ca.unlink()
    report = send_pending(sessions, settings)
    assert (report.sent, report.retried) == (0, len(produced))
    with sessions() as session:
        rows = session.scalars(select(Outbound)).all()
    assert {row.state for row in rows} == {OutboundState.PENDING}
    assert all(row.lease_owner is None and row.attempts == 1 for row in rows)
    assert all(str(ca) in (row.last_error or "") for row in rows)
