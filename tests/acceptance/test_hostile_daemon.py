"""``osteoflag serve`` as a subprocess fed the hostile cases and part of the fuzz corpus.

The listener must accept every case it can be sent (it stores bytes; it reads no more than
the first bytes naming the instance), the daemon must keep running and answer C-ECHO, the
worker must give each case its expected outcome (``failed`` ones with the reason), the
daemon's peak RSS must stay bounded (the deflate bomb inflates past 1 GiB) and no patient
identifier may reach its log.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pynetdicom.dsutils import split_dataset

from osteoflag.pacs import status
from osteoflag.pacs.scu import Peer, send_c_echo
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.wait import wait_for
from tests.fuzz.cases import EXPECTED, write_cases
from tests.fuzz.corpus import base_datasets, write_mutants
from tests.fuzz.send import send_raw
from tests.helpers.dicom import ACCESSION_NUMBER, PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME

MUTANTS = 20
PEAK_RSS_LIMIT_MB = 1024


def _peak_rss_mb(pid: int) -> int:
    """VmHWM: the process's peak resident set size, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM in /proc status")


def _unsettled(database: Path) -> int:
    """Instances still queued or processing (read-only, without spawning the CLI each poll)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        query = "SELECT COUNT(*) FROM instances WHERE state IN ('queued', 'processing')"
        return int(db.execute(query).fetchone()[0])


def _outcomes(database: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT sop_instance_uid, state, COALESCE(error, '') FROM instances")
        return {uid: (state, error) for uid, state, error in rows}


def _uid(path: Path) -> str:
    meta, _ = split_dataset(path)
    return str(meta.MediaStorageSOPInstanceUID)


@pytest.mark.timeout(240)
def test_daemon_survives_hostile_input(tmp_path: Path, tiny_bundle: Path) -> None:
    cases = write_cases(tmp_path / "cases")
    mutants = write_mutants(tmp_path / "mutants", base_datasets(tmp_path / "b", 7), MUTANTS, 7)
    sections = base_sections(tmp_path, tiny_bundle)
    sections["shadow"] = True  # no destination: the objects are still built (and kept)
    database = tmp_path / "var" / "osteoflag.db"
    with DaemonProcess(write_config(tmp_path, sections), sections["listener"]["port"]) as daemon:
        assert daemon.process is not None
        report = send_raw([*cases.values(), *mutants], daemon.port, "OSTEOFLAG")
        # Only a file whose own File Meta Information is broken cannot be put on the wire.
        assert [path.stem for path in report.unsendable] == ["truncated-in-meta"]
        assert {report.statuses[path] for path in cases.values() if path in report.statuses} == {
            status.SUCCESS
        }
        # A mutant whose data set no longer names the instance its File Meta names is refused.
        assert set(report.statuses.values()) <= {status.SUCCESS, status.DATASET_MISMATCH}
        wait_for(lambda: _unsettled(database) == 0, timeout=180, interval=0.2)
        assert daemon.process.poll() is None
        assert send_c_echo(Peer("127.0.0.1", daemon.port, "OSTEOFLAG"), "CHECK") == 0
        peak = _peak_rss_mb(daemon.process.pid)
    outcomes = _outcomes(database)
    assert any((tmp_path / "var" / "outgoing" / "summary").glob("*.dcm"))
    assert len(outcomes) == list(report.statuses.values()).count(status.SUCCESS)
    for name, (state, reason) in EXPECTED.items():
        got_state, got_reason = outcomes[_uid(cases[name])]
        assert got_state == state, f"{name}: {got_state} {got_reason}"
        assert reason in got_reason, f"{name}: {got_reason}"
    for state, reason in outcomes.values():
        assert state in ("done", "skipped", "failed")
        assert state == "done" or reason, "a skipped or failed instance without a reason"
    log = daemon.log_path.read_text()
    # The fixtures' values, and the malformed ones of the "invalid-patient-values" case.
    for value in (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE[:7], ACCESSION_NUMBER):
        assert value not in log
    states = [state for state, _ in outcomes.values()]
    print(
        f"\ndaemon hostile run: {len(cases)} cases + {MUTANTS} mutants, stored "
        f"{len(outcomes)}, unsendable {len(report.unsendable)}, "
        f"outcomes { {s: states.count(s) for s in sorted(set(states))} }, peak RSS {peak} MB"
    )
    assert peak < PEAK_RSS_LIMIT_MB
