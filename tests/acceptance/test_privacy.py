"""No patient identifier in any log line or message; patient data stored owner-only.

The daemon runs at DEBUG and is fed instances that succeed, are skipped (too small) and
fail (pixel data shorter than declared), so reasons and errors are logged too; ``send``,
``status`` and ``infer`` (with a file it cannot classify) run as real commands.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from testkit.daemon import DaemonProcess, base_sections, osteoflag, write_config
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.helpers.privacy import loose_modes, private_identifier_lines
from tests.sr_fixtures import RecordingSCP, make_dx


def _fixtures(folder: Path) -> Path:
    folder.mkdir()
    write_in_syntax(radiograph("DX", seed=1), ExplicitVRLittleEndian, folder / "ok.dcm")
    write_in_syntax(
        radiograph("CR", rows=32, columns=32), ExplicitVRLittleEndian, folder / "small.dcm"
    )
    short = radiograph("SC", seed=2)
    short.PixelData = short.PixelData[:100]
    write_in_syntax(short, ExplicitVRLittleEndian, folder / "short.dcm")
    make_dx(seed=3).save_as(folder / "dx.dcm", enforce_file_format=True)
    return folder


def _finished(database: Path) -> bool:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        states = [state for (state,) in db.execute("SELECT state FROM instances")]
        pending = db.execute("SELECT count(*) FROM outbound WHERE state = 'pending'").fetchone()
    return len(states) == 4 and set(states) <= {"done", "skipped", "failed"} and pending[0] == 0


def test_logs_and_messages_name_no_patient_and_files_are_private(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    files = _fixtures(tmp_path / "study")
    pacs = RecordingSCP(ae_title="PACS")
    sections = base_sections(tmp_path, tiny_bundle)
    sections["sender"] = {"interval_seconds": 0.5}
    sections["destinations"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
    config = write_config(tmp_path, sections)
    config.write_text('log_level = "DEBUG"\n' + config.read_text())
    outputs: list[str] = []
    try:
        with DaemonProcess(config, sections["listener"]["port"]) as daemon:
            sent = osteoflag(
                "send",
                str(files),
                "--host",
                "127.0.0.1",
                "--port",
                str(daemon.port),
                "--called-aet",
                "OSTEOFLAG",
                config=config,
            )
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: _finished(tmp_path / "var" / "osteoflag.db"), timeout=120)
            status = osteoflag("status", "--json", config=config)
            assert daemon.terminate() == 0
        refused = osteoflag(
            "send", str(files), "--host", "127.0.0.1", "--port", str(daemon.port), config=config
        )
    finally:
        pacs.stop()
    inferred = osteoflag("infer", str(files), "--json", config=config)
    assert inferred.returncode == 1  # short.dcm cannot be classified
    assert '"error"' in inferred.stdout
    assert refused.returncode == 1
    log = daemon.log_path.read_text()
    assert '"instance skipped"' in log and '"instance failed"' in log
    for run in (sent, status, refused, inferred):
        outputs += [run.stdout, run.stderr]
    assert private_identifier_lines("\n".join([log, *outputs])) == []
    assert loose_modes(tmp_path / "var") == []
