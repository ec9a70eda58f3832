"""``osteoflag serve`` fed headers with a non-DICOM birth date: no page, log line or stored
reason shows it, and the instances still get their result (the undetermined SR too)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.net import free_port, port_open
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, set_raw, write_in_syntax
from tests.helpers.web import WebClient

BIRTH_DATE = "1945-03-17"


def _files(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    sloppy = set_raw(radiograph("DX", seed=1), "PatientBirthDate", BIRTH_DATE.encode())
    set_raw(sloppy, "WindowCenter", b"centre")
    set_raw(sloppy, "WindowWidth", b"400")
    set_raw(sloppy, "SpecificCharacterSet", b"\\ISO 2022 IR 87")
    broken = set_raw(radiograph("DX", seed=2), "PatientBirthDate", BIRTH_DATE.encode())
    broken.PixelData = broken.PixelData[:100]
    return {
        "done": write_in_syntax(sloppy, ExplicitVRLittleEndian, folder / "sloppy.dcm"),
        "failed": write_in_syntax(broken, ExplicitVRLittleEndian, folder / "broken.dcm"),
    }


def _rows(database: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return list(db.execute(query))


def test_no_birth_date_in_pages_logs_or_reasons(tmp_path: Path, tiny_bundle: Path) -> None:
    files = _files(tmp_path / "study")
    web_port = free_port()
    sections = base_sections(tmp_path, tiny_bundle)
    sections["web"] = {"port": web_port}
    sections["report"] = {"undetermined_sr": True}
    sections["shadow"] = True  # no destination: the objects are made only to be kept for the page
    database = tmp_path / "var" / "osteoflag.db"
    config = write_config(tmp_path, sections)
    config.write_text('log_level = "DEBUG"\n' + config.read_text())
    with DaemonProcess(config, sections["listener"]["port"]) as daemon:
        peer = Peer("127.0.0.1", daemon.port, "OSTEOFLAG")
        assert all(outcome.ok for outcome in send_c_store(list(files.values()), peer, "MOD"))
        query = "SELECT sop_instance_uid, id, state, COALESCE(error, '') FROM instances"
        wait_for(
            lambda: {state for *_, state, _ in _rows(database, query)} == {"done", "failed"},
            timeout=120,
        )
        wait_for(lambda: port_open(web_port), timeout=30)
        client = WebClient(f"http://127.0.0.1:{web_port}")
        rows = {uid: (row_id, state, error) for uid, row_id, state, error in _rows(database, query)}
        pages = [client.get(path) for path in ("/", "/results", "/results?state=failed")]
        pages += [client.get(f"/results/{row_id}") for row_id, _, _ in rows.values()]
    for name, path in files.items():
        _, state, _ = rows[str(dcmread(path).SOPInstanceUID)]
        assert state == name
    assert all(page.status == 200 for page in pages)
    produced = _rows(database, "SELECT kind FROM outbound")  # shadow mode: no rows
    assert produced == []
    outgoing = sorted(p.parent.name for p in (tmp_path / "var" / "outgoing").rglob("*.dcm"))
    assert outgoing == ["sr", "sr", "summary"]  # the failed one's undetermined SR too
    log = daemon.log_path.read_text()
    assert "(0010,0030) PatientBirthDate" in log  # named, not quoted
    stored = "\n".join(error for _, _, error in rows.values())
    for text in (log, stored, *(page.text for page in pages)):
        # The value and its DA-normalised form; a bare "1945" also occurs inside random UIDs.
        assert BIRTH_DATE not in text
        assert "19450317" not in text
