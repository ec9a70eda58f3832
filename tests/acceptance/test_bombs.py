"""Decompression bombs against ``osteoflag serve``: a real subprocess, real uploads to its
uvicorn server and a C-STORE to its listener, memory measured from /proc.

A 12000 x 14000 PNG of ~165 kB once took the process to 3.1 GB on "try an image" (decoded
before its size was checked), and a deflated DICOM inflating to 922 MB, under the old 1 GiB
cap, took the worker to 3.0 GB. Both are now refused from their headers, within the decode
budget, and at most ``[web] max_concurrent_uploads`` uploads are handled at once.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from osteoflag.pacs import status
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.net import free_port, port_open
from testkit.wait import wait_for
from tests.fuzz.corpus import deflate_bomb
from tests.fuzz.send import send_raw
from tests.helpers.bombs import png_bomb
from tests.helpers.web import Reply, WebClient, csrf_token

#: What three bomb uploads at once, and then the worker's bomb, may add to the daemon's RSS.
GROWTH_LIMIT_MB = 300
#: Inflated size of the DICOM bomb: under the old 1 GiB cap, over the 512 MB budget.
INFLATED_BYTES = 922 * 2**20


def _memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak since the last reset), from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def _reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (proc(5), clear_refs value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _failed_reason(database: Path) -> str | None:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT state, error FROM instances").fetchone()
    return str(row[1]) if row is not None and row[0] == "failed" else None


def test_bombs_are_refused_from_their_headers_within_bounded_memory(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    png = png_bomb(12000, 14000)
    dicom = tmp_path / "deflated-bomb.dcm"
    dicom.write_bytes(deflate_bomb(INFLATED_BYTES))
    web_port = free_port()
    sections = base_sections(tmp_path, tiny_bundle)
    sections["web"] = {"port": web_port}
    database = tmp_path / "var" / "osteoflag.db"
    with DaemonProcess(write_config(tmp_path, sections), sections["listener"]["port"]) as daemon:
        assert daemon.process is not None
        pid = daemon.process.pid
        wait_for(lambda: port_open(web_port), timeout=30)
        client = WebClient(f"http://127.0.0.1:{web_port}")
        token = csrf_token(client.get("/try").text)
        before = _memory_mb(pid)["VmRSS"]
        _reset_peak(pid)

        def upload(name: str) -> Reply:
            content = dicom.read_bytes() if name.endswith(".dcm") else png
            return client.post_file("/try", {"csrf_token": token}, name, content)

        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(upload, ["a.png", "b.dcm", "c.png"]))
        uploads_peak = _memory_mb(pid)["VmHWM"] - before
        assert {reply.status for reply in replies} <= {400, 503}, replies
        refused = [reply.text for reply in replies if reply.status == 400]
        assert refused and all("too large" in t or "inflates to more" in t for t in refused)
        report = send_raw([dicom], daemon.port, "OSTEOFLAG")
        assert report.statuses == {dicom: status.SUCCESS}
        reason = wait_for(lambda: _failed_reason(database), timeout=120)
        worker_peak = _memory_mb(pid)["VmHWM"] - before
    print(
        f"\nbombs: RSS before {before:.0f} MB, peak growth {uploads_peak:.0f} MB after three "
        f"uploads, {worker_peak:.0f} MB after the worker's deflate bomb"
    )
    assert f"inflates to more than {512 * 2**20} bytes" in reason
    assert uploads_peak <= GROWTH_LIMIT_MB
    assert worker_peak <= GROWTH_LIMIT_MB
