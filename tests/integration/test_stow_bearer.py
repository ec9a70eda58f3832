"""A DICOMweb destination with a bearer token, against a recording STOW-RS server on loopback.

Orthanc has no bearer authentication, so a small real HTTP server stands in: it keeps each
request's headers and body and answers with the status it is given. The request must carry
the token, the multipart type PS3.18 asks for and the very file written for the object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import send_pending
from testkit.net import free_port
from tests.helpers.rows import produce_for
from tests.sr_fixtures import make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)


class _Recorder(BaseHTTPRequestHandler):
    server: _RecordingServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads ``requests``."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.path, dict(self.headers.items()), body))
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    status = 200
    requests: list[tuple[str, dict[str, str], bytes]]


@pytest.fixture
def stow() -> Iterator[_RecordingServer]:
    server = _RecordingServer(("127.0.0.1", 0), _Recorder)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _settings(tmp_path: Path, server: _RecordingServer) -> Settings:
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web/"
    destination = {"type": "dicomweb", "url": url, "token": "t0k-123", "objects": ["sr"]}
    return parse_settings(
        {
            "storage": {
                "path": str(tmp_path / "var"),
                "database_url": "sqlite:///var/osteoflag.db",
            },
            "destinations": [destination],
        },
        tmp_path,
    )


def test_bearer_token_multipart_type_and_the_written_file(
    tmp_path: Path, sessions: sessionmaker[Session], stow: _RecordingServer
) -> None:
    settings = _settings(tmp_path, stow)
    with sessions() as session:
        (row,) = produce_for(
            session, make_dx(), Classification(Label.NO_FRACTURE, 0.1), MODEL, settings
        )
        session.commit()
        written = Path(row.file_path).read_bytes()

    assert send_pending(sessions, settings).sent == 1
    ((path, headers, body),) = stow.requests
    assert path == "/dicom-web/studies"
    assert headers["Authorization"] == "Bearer t0k-123"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert written in body


def test_a_busy_server_is_retried_not_failed(
    tmp_path: Path, sessions: sessionmaker[Session], stow: _RecordingServer
) -> None:
    stow.status = 503
    settings = _settings(tmp_path, stow)
    with sessions() as session:
        produce_for(session, make_dx(), Classification(Label.FRACTURE, 0.9), MODEL, settings)
        session.commit()

    report = send_pending(sessions, settings)
    assert (report.sent, report.retried, report.failed) == (0, 1, 0)


def test_an_unreachable_server_is_logged_once_with_why(
    tmp_path: Path, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web/"  # nothing listens there
    settings = parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "database_url": "sqlite:///var/o.db"},
            "destinations": [{"type": "dicomweb", "url": url, "objects": ["sr"]}],
        },
        tmp_path,
    )
    with sessions() as session:
        for seed in range(2):
            source = make_dx(seed=seed)
            produce_for(session, source, Classification(Label.FRACTURE, 0.9), MODEL, settings)
        session.commit()

    with caplog.at_level(logging.WARNING, logger="osteoflag.pacs.sender"):
        assert send_pending(sessions, settings).retried == 2
    (record,) = [r for r in caplog.records if r.name == "osteoflag.pacs.sender"]
    assert record.getMessage() == "destination unreachable"
    assert record.reason  # type: ignore[attr-defined]
