"""``osteoflag`` as a subprocess: crash durability, graceful stop, and the CLI contract."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from osteoflag.pacs import status
from osteoflag.pacs.scu import Peer, StoreOutcome, send_c_store
from testkit.daemon import DaemonProcess, base_sections, osteoflag, write_config
from testkit.net import free_port
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, write_in_syntax


def _daemon(tmp_path: Path, bundle: Path, **sections: dict[str, object]) -> DaemonProcess:
    config_sections = base_sections(tmp_path, bundle)
    for name, values in sections.items():
        config_sections.setdefault(name, {}).update(values)
    config = write_config(tmp_path, config_sections)
    return DaemonProcess(config, config_sections["listener"]["port"])


def _instance_rows(tmp_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "var" / "osteoflag.db") as db:
        return list(db.execute("SELECT sop_instance_uid, state FROM instances"))


def test_acknowledged_store_survives_sigkill(tmp_path: Path, tiny_bundle: Path) -> None:
    path = write_in_syntax(radiograph(), ExplicitVRLittleEndian, tmp_path / "dx.dcm")
    uid = dcmread(path).SOPInstanceUID
    daemon = _daemon(tmp_path, tiny_bundle)
    with daemon:
        [outcome] = send_c_store([path], Peer("127.0.0.1", daemon.port, "OSTEOFLAG"), "MOD")
        assert outcome.status == status.SUCCESS
        daemon.kill()
    with daemon:
        rows = dict(_instance_rows(tmp_path))
        assert uid in rows
        assert rows[uid] in {"queued", "processing", "done", "skipped", "failed"}
        counts = daemon.status()["instances"]
        assert sum(counts.values()) == 1
        [stored_path] = (tmp_path / "var" / "incoming").rglob(f"{uid}.*.dcm")
        stored = dcmread(stored_path)
        assert stored.SOPInstanceUID == uid


def test_store_interrupted_before_its_row_is_committed_is_not_acknowledged(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    path = write_in_syntax(radiograph(), ExplicitVRLittleEndian, tmp_path / "dx.dcm")
    uid = dcmread(path).SOPInstanceUID
    daemon = _daemon(tmp_path, tiny_bundle)
    outcomes: list[StoreOutcome] = []
    with daemon:
        # Another writer holds the database: the daemon writes the file, then waits to commit.
        blocker = sqlite3.connect(tmp_path / "var" / "osteoflag.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        sender = threading.Thread(
            target=lambda: outcomes.extend(
                send_c_store([path], Peer("127.0.0.1", daemon.port, "OSTEOFLAG"), "MOD")
            )
        )
        sender.start()
        wait_for(lambda: any((tmp_path / "var" / "incoming").rglob(f"{uid}.*.dcm")))
        daemon.kill()
        sender.join(timeout=60)
        blocker.rollback()
        blocker.close()
    [outcome] = outcomes
    assert not outcome.ok
    assert outcome.status is None
    with daemon:
        assert _instance_rows(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_stops_gracefully_and_keeps_the_queue(
    tmp_path: Path, tiny_bundle: Path, signum: int
) -> None:
    """SIGHUP too: the terminal of a foreground ``make serve`` closed."""
    path = write_in_syntax(radiograph(), ExplicitVRLittleEndian, tmp_path / "dx.dcm")
    daemon = _daemon(tmp_path, tiny_bundle)
    with daemon:
        send_c_store([path], Peer("127.0.0.1", daemon.port, "OSTEOFLAG"), "MOD")
        assert daemon.terminate(signum=signum) == 0
    log = [json.loads(line) for line in daemon.log_path.read_text().splitlines()]
    assert any(entry["message"] == "daemon stopped" for entry in log)
    assert len(_instance_rows(tmp_path)) == 1


def test_cli_send_echo_and_status(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    for index, modality in enumerate(("DX", "CR", "SC")):
        write_in_syntax(radiograph(modality), ExplicitVRLittleEndian, folder / f"{index}.dcm")
    daemon = _daemon(tmp_path, tiny_bundle)
    with daemon:
        port = str(daemon.port)
        echo = osteoflag(
            "echo", "127.0.0.1", port, "--called-aet", "OSTEOFLAG", config=daemon.config
        )
        assert echo.returncode == 0, echo.stderr
        sent = osteoflag(
            "send",
            str(folder),
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--called-aet",
            "OSTEOFLAG",
            config=daemon.config,
        )
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.count("status 0x0000") == 3
        counts = daemon.status()
        assert set(counts) == {"instances", "outbound"}
        assert set(counts["instances"]) == {"queued", "processing", "done", "skipped", "failed"}
        assert set(counts["outbound"]) == {"pending", "sent", "failed"}
        assert sum(counts["instances"].values()) == 3


def test_echo_to_a_closed_port_fails_with_exit_1(tmp_path: Path, tiny_bundle: Path) -> None:
    config = write_config(tmp_path, base_sections(tmp_path, tiny_bundle))
    result = osteoflag("echo", "127.0.0.1", str(free_port()), config=config)
    assert result.returncode == 1
    assert "not established" in result.stderr


def test_config_errors_exit_2_naming_the_key(tmp_path: Path, tiny_bundle: Path) -> None:
    sections = base_sections(tmp_path, tiny_bundle)
    sections["listener"]["prot"] = 104
    unknown = osteoflag("status", "--json", config=write_config(tmp_path, sections))
    assert unknown.returncode == 2
    assert "listener.prot" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1

    sections = base_sections(tmp_path, tiny_bundle)
    sections["listener"]["port"] = "eleven"
    wrong = osteoflag("status", "--json", config=write_config(tmp_path, sections))
    assert wrong.returncode == 2
    assert "listener.port" in wrong.stderr

    missing = osteoflag("status", "--json", config=tmp_path / "nowhere.toml")
    assert missing.returncode == 2
    assert "not found" in missing.stderr
