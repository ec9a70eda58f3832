"""``osteoflag serve`` runs retention: delivered work loses its files, pending work never does,
and files nothing recorded go."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.net import free_port
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.sr_fixtures import RecordingSCP


def _rows(database: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return list(db.execute(sql))


def _files(database: Path, state: str) -> list[Path]:
    rows = _rows(
        database,
        "SELECT i.file_path FROM instances i WHERE i.state = '" + state + "' UNION ALL "
        "SELECT o.file_path FROM outbound o JOIN instances i ON i.id = o.instance_id"
        " WHERE i.state = '" + state + "'",
    )
    return [Path(str(path)) for (path,) in rows]


def _removed(database: Path, state: str) -> bool:
    rows = _rows(database, f"SELECT removed_at FROM instances WHERE state = '{state}'")
    return bool(rows) and all(removed is not None for (removed,) in rows)


def _min_attempts(database: Path) -> int:
    [(attempts,)] = _rows(database, "SELECT min(attempts) FROM outbound")
    return int(str(attempts or 0))


def test_daemon_removes_files_once_delivered_and_keeps_pending_ones(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    pacs_port = free_port()
    sections = base_sections(tmp_path, tiny_bundle)
    sections["sender"] = {
        "interval_seconds": 0.3,
        "timeout_seconds": 2.0,
        "backoff_base_seconds": 0.3,
        "backoff_cap_seconds": 0.6,
    }
    sections["retention"] = {"max_age_days": 1e-6, "interval_seconds": 0.3}  # ~0.09 s
    sections["destinations"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
    database = tmp_path / "var" / "osteoflag.db"
    files = [
        write_in_syntax(radiograph(seed=1), ExplicitVRLittleEndian, tmp_path / "ok.dcm"),
        write_in_syntax(
            radiograph(rows=32, columns=32), ExplicitVRLittleEndian, tmp_path / "small.dcm"
        ),
    ]
    # What a worker wrote two days ago for an outcome it could not record.
    unrecorded = tmp_path / "var" / "outgoing" / "summary" / "1.2.3.99.dcm"
    unrecorded.parent.mkdir(parents=True)
    unrecorded.write_bytes(b"unrecorded")
    os.utime(unrecorded, (time.time() - 2 * 86400,) * 2)
    daemon = DaemonProcess(write_config(tmp_path, sections), sections["listener"]["port"])
    with daemon:
        outcomes = send_c_store(files, Peer("127.0.0.1", daemon.port, "OSTEOFLAG"), "MODALITY")
        assert all(outcome.ok for outcome in outcomes)
        # The skipped instance owes nothing: retention takes it while the PACS is down...
        wait_for(lambda: _removed(database, "skipped"), timeout=60)
        wait_for(lambda: _min_attempts(database) >= 2, timeout=60)
        # ...but the classified one's results are pending, so all its files stay.
        assert not _removed(database, "done")
        pending = _files(database, "done")
        assert len(pending) == 3 and all(path.exists() for path in pending)

        pacs = RecordingSCP(port=pacs_port, ae_title="PACS")
        try:
            wait_for(lambda: _removed(database, "done"), timeout=60)
        finally:
            pacs.stop()
        assert daemon.terminate() == 0
    assert len(pacs.received) == 2
    assert not unrecorded.exists()
    assert not any(path.exists() for path in pending + _files(database, "skipped"))
    events = _rows(database, "SELECT count(*) FROM events WHERE action = 'files_removed'")
    assert events == [(2,)]
    states = _rows(database, "SELECT state FROM outbound WHERE removed_at IS NOT NULL")
    assert states == [("sent",), ("sent",)]
