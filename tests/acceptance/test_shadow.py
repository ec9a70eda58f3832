"""Shadow mode against a real Storage SCP peer: results on the operator page, nothing sent."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.net import free_port, port_open
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.sr_fixtures import RecordingSCP, serving


def _rows(folder: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(folder / "var" / "osteoflag.db") as db:
        return list(db.execute(query))


def _run(
    tmp_path: Path, tiny_bundle: Path, shadow_all: bool
) -> tuple[str, RecordingSCP, RecordingSCP]:
    """Route one radiograph to a daemon with a shadow PACS and a live archive; returns the
    result page's HTML once the live archive has the objects (or, all in shadow, once the
    objects are kept)."""
    shadowed, live = RecordingSCP(ae_title="PACS"), RecordingSCP(ae_title="ARCHIVE")
    web_port = free_port()
    sections = base_sections(tmp_path, tiny_bundle)
    sections["web"] = {"port": web_port}
    sections["sender"] = {"interval_seconds": 0.2}
    sections["destinations"] = [
        {"ae_title": "PACS", "host": "127.0.0.1", "port": shadowed.port, "shadow": True},
        {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": live.port},
    ]
    if shadow_all:
        sections["shadow"] = True  # type: ignore[assignment]
    process = DaemonProcess(write_config(tmp_path, sections), sections["listener"]["port"])
    try:
        with serving(process):
            path = write_in_syntax(radiograph(seed=5), ExplicitVRLittleEndian, tmp_path / "x.dcm")
            [outcome] = send_c_store([path], Peer("127.0.0.1", process.port, "OSTEOFLAG"), "MOD")
            assert outcome.ok
            wait_for(
                lambda: _rows(tmp_path, "SELECT 1 FROM events WHERE action = 'kept_shadow'"),
                timeout=120,
            )
            if not shadow_all:
                wait_for(lambda: len(live.received) == 2, timeout=120)  # SR + summary
            wait_for(lambda: port_open(web_port), timeout=30)
            [(instance_id,)] = _rows(tmp_path, "SELECT id FROM instances")
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/results/{instance_id}") as r:
                page = r.read().decode()
            assert process.terminate(timeout=120) == 0
    finally:
        shadowed.stop()
        live.stop()
    return page, shadowed, live


def test_shadow_destination_gets_nothing_while_the_page_shows_the_result(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    page, shadowed, live = _run(tmp_path, tiny_bundle, shadow_all=False)
    assert shadowed.received == []
    assert len(live.received) == 2
    destinations = _rows(tmp_path, "SELECT DISTINCT destination FROM outbound")
    assert destinations == [(f"ARCHIVE@127.0.0.1:{live.port}",)]
    kept = [
        json.loads(str(d))
        for (d,) in _rows(tmp_path, "SELECT detail FROM events WHERE action = 'kept_shadow'")
    ]
    assert sorted(k["kind"] for k in kept) == ["sr", "summary"]
    assert all(k["not_sent_to"] == [f"PACS@127.0.0.1:{shadowed.port}"] for k in kept)
    assert 'id="sr"' in page and 'id="summary"' in page
    assert "kept (shadow mode)" in page


def test_top_level_shadow_sends_nothing_anywhere(tmp_path: Path, tiny_bundle: Path) -> None:
    page, shadowed, live = _run(tmp_path, tiny_bundle, shadow_all=True)
    assert shadowed.received == [] and live.received == []
    assert _rows(tmp_path, "SELECT COUNT(*) FROM outbound") == [(0,)]
    assert 'id="sr"' in page and 'id="summary"' in page
    assert 'id="probability"' in page
