"""``osteoflag serve`` delivering to a PACS: with the PACS down, results wait as ``pending``
with backoff and go out once it is back, never twice; refused images get an Undetermined SR
when configured."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from osteoflag.inference.labels import Label
from osteoflag.pacs.scu import Peer, send_c_store
from osteoflag.pacs.sr_read import read_result
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.net import free_port
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.sr_fixtures import RecordingSCP, serving


def _attempts(tmp_path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp_path / "var" / "osteoflag.db") as db:
        return list(db.execute("SELECT state, attempts FROM outbound ORDER BY id"))


def _sent(tmp_path: Path) -> int:
    return sum(state == "sent" for state, _ in _attempts(tmp_path))


@pytest.fixture
def daemon(tmp_path: Path, tiny_bundle: Path) -> Iterator[tuple[DaemonProcess, int]]:
    pacs_port = free_port()
    sections = base_sections(tmp_path, tiny_bundle)
    sections["sender"] = {
        "interval_seconds": 0.2,
        "timeout_seconds": 2.0,
        "backoff_base_seconds": 0.5,
        "backoff_cap_seconds": 1.0,
    }
    sections["destinations"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
    process = DaemonProcess(write_config(tmp_path, sections), sections["listener"]["port"])
    with serving(process):
        yield process, pacs_port


def _store(tmp_path: Path, daemon: DaemonProcess, seed: int) -> None:
    path = write_in_syntax(radiograph(seed=seed), ExplicitVRLittleEndian, tmp_path / f"{seed}.dcm")
    [outcome] = send_c_store([path], Peer("127.0.0.1", daemon.port, "OSTEOFLAG"), "MODALITY")
    assert outcome.ok


def test_pacs_outage_then_recovery_delivers_each_object_once(
    tmp_path: Path, daemon: tuple[DaemonProcess, int]
) -> None:
    process, pacs_port = daemon
    _store(tmp_path, process, seed=1)
    retried = wait_for(
        lambda: (
            (rows := _attempts(tmp_path))
            and len(rows) == 2
            and all(state == "pending" and attempts >= 2 for state, attempts in rows)
            and rows
        ),
        timeout=180,
    )
    assert len(retried) == 2

    pacs = RecordingSCP(port=pacs_port, ae_title="PACS")
    try:
        wait_for(lambda: _sent(tmp_path) == 2, timeout=180)
        _store(tmp_path, process, seed=2)  # later sender runs must not resend the first two
        wait_for(lambda: _sent(tmp_path) == 4, timeout=180)
        assert process.terminate(timeout=120) == 0
    finally:
        pacs.stop()
    assert len(pacs.received) == 4
    assert len(set(pacs.received)) == 4
    assert process.status()["outbound"] == {"pending": 0, "sent": 4, "failed": 0}


def test_refused_image_gets_an_undetermined_sr_when_configured(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    pacs = RecordingSCP(ae_title="PACS")
    sections = base_sections(tmp_path, tiny_bundle)
    sections["model"]["body_parts"] = ["WRIST"]
    sections["report"] = {"undetermined_sr": True, "summary_image": False}
    sections["sender"] = {"interval_seconds": 0.2}
    sections["destinations"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
    process = DaemonProcess(write_config(tmp_path, sections), sections["listener"]["port"])
    try:
        with serving(process):
            _store(tmp_path, process, seed=3)  # a HAND: outside the WRIST-only domain
            wait_for(lambda: _sent(tmp_path) == 1, timeout=180)
            assert process.terminate(timeout=120) == 0
    finally:
        pacs.stop()
    with sqlite3.connect(tmp_path / "var" / "osteoflag.db") as db:
        [(kind, path)] = list(db.execute("SELECT kind, file_path FROM outbound"))
        [(state,)] = list(db.execute("SELECT state FROM instances"))
    reported = read_result(dcmread(path))
    assert (kind, state) == ("sr", "skipped")
    assert reported.label is Label.UNDETERMINED
    assert reported.reason is not None and "Body Part Examined" in reported.reason
    assert len(pacs.received) == 1
