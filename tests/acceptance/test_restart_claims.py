"""Claims of a SIGKILLed ``osteoflag serve`` are taken back within seconds of the restart.

A sender is killed in the middle of a C-STORE (the PACS holds its answer) and a worker
in the middle of a batch (its instance's file is a FIFO nobody writes yet, as a hung
network share would be); then the same role starts again (on PostgreSQL, as split roles
must be; ``all`` on SQLite, as one machine runs it). With default settings the
claims' leases are minutes long (``sender.run_seconds + 3 x timeout_seconds``,
``worker.lease_seconds``): what is measured is how long the restarted process leaves
the objects and instances its predecessor had claimed, which must be seconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, text

from osteoflag.config import load_settings
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.postgres import PostgresServer
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.helpers.rows import produce_for
from tests.sr_fixtures import RecordingSCP, make_dx

#: A restarted process must have taken its predecessor's claims back within this; the
#: leases those claims carry are minutes long.
RECOVERY_SECONDS = 60.0
START_SECONDS = 180.0


class HeldSCP(RecordingSCP):
    """A PACS that holds every C-STORE answer until :attr:`gate` opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        super().__init__()

    def _on_store(self, event: Any) -> int:
        self.entered.set()
        self.gate.wait(timeout=START_SECONDS)
        return super()._on_store(event)


@pytest.fixture
def pacs() -> Iterator[HeldSCP]:
    scp = HeldSCP()
    try:
        yield scp
    finally:
        scp.gate.set()
        scp.stop()


def _rows(database: Engine, sql: str) -> list[tuple[Any, ...]]:
    with database.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql))]


def _config(tmp_path: Path, bundle: Path, pacs_port: int, request: pytest.FixtureRequest) -> Path:
    """The settings of ``role`` (the test's parameter): a role of its own needs PostgreSQL."""
    sections = base_sections(tmp_path, bundle)
    if request.node.callspec.params["role"] != "all":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        sections["storage"]["database_url"] = postgres.database()
    sections["destinations"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
    return write_config(tmp_path, sections)


def _start(daemon: DaemonProcess) -> float:
    """Start the daemon; the monotonic time it was ready."""
    daemon.start(timeout=START_SECONDS)
    return time.monotonic()


@pytest.mark.parametrize("role", ["sender", "all"])
def test_a_killed_senders_claimed_objects_go_out_seconds_after_the_restart(
    tmp_path: Path,
    tiny_bundle: Path,
    pacs: HeldSCP,
    role: str,
    record_property: Any,
    request: pytest.FixtureRequest,
) -> None:
    config = _config(tmp_path, tiny_bundle, pacs.port, request)
    settings = load_settings(config)
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    model = ModelIdentity.from_bundle(load_bundle(tiny_bundle))
    with session_factory(engine)() as session:
        for _ in range(3):
            produce_for(session, make_dx(), Classification(Label.FRACTURE, 0.9), model, settings)
        session.commit()
    database = engine
    daemon = DaemonProcess(config, settings.listener.port, role)
    try:
        daemon.start(timeout=START_SECONDS)
        wait_for(pacs.entered.is_set, timeout=60)  # a run holds its claims, mid-C-STORE
        daemon.kill()
        pacs.gate.set()
        ready = _start(daemon)
        wait_for(
            lambda: (
                _rows(database, "SELECT count(*) FROM outbound WHERE state != 'sent'") == [(0,)]
            ),
            timeout=RECOVERY_SECONDS,
        )
        waited = time.monotonic() - ready
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)
        engine.dispose()
    record_property("claimed_outbound_wait_seconds", round(waited, 1))
    print(f"\n{role}: claimed objects went out {waited:.1f} s after the restart")
    assert len(set(pacs.received)) == 6  # 3 SRs and 3 summaries, each at least once


def _feed(fifo: Path, data: bytes, stop: threading.Event) -> threading.Thread:
    """Write ``data`` into ``fifo`` each time a reader opens it, until ``stop``."""

    def write() -> None:
        while not stop.is_set():
            try:
                with fifo.open("wb") as pipe:  # blocks until the worker opens it
                    pipe.write(data)
            except BrokenPipeError:
                continue  # the reader took what it needed and closed

    thread = threading.Thread(target=write, name="fifo-writer", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("role", ["worker", "all"])
def test_a_killed_workers_claimed_instance_is_taken_back_seconds_after_the_restart(
    tmp_path: Path,
    tiny_bundle: Path,
    pacs: HeldSCP,
    role: str,
    record_property: Any,
    request: pytest.FixtureRequest,
) -> None:
    pacs.gate.set()
    config = _config(tmp_path, tiny_bundle, pacs.port, request)
    settings = load_settings(config)
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    fifo = tmp_path / "hung.dcm"
    os.mkfifo(fifo, 0o600)
    received = queue.Received(
        sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae="MODALITY",
        peer_address="127.0.0.1",
        file_path=str(fifo),
    )
    assert queue.enqueue(session_factory(engine), received)
    database = engine

    def claims() -> list[tuple[Any, ...]]:
        return _rows(database, "SELECT state, attempts, lease_owner FROM instances")

    daemon = DaemonProcess(config, settings.listener.port, role)
    try:
        daemon.start(timeout=START_SECONDS)
        first_owner = wait_for(
            lambda: claims()[0][0] == "processing" and claims()[0][2], timeout=60
        )
        daemon.kill()
        ready = _start(daemon)
        wait_for(
            lambda: claims()[0][0] == "processing" and claims()[0][2] != first_owner,
            timeout=RECOVERY_SECONDS,
        )
        waited = time.monotonic() - ready
        source = write_in_syntax(radiograph(), ExplicitVRLittleEndian, tmp_path / "src.dcm")
        fed = threading.Event()
        _feed(fifo, source.read_bytes(), fed)
        wait_for(lambda: claims()[0][0] != "processing", timeout=RECOVERY_SECONDS)
        fed.set()
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)
        engine.dispose()
    record_property("claimed_instance_wait_seconds", round(waited, 1))
    print(f"\n{role}: the claimed instance was taken back {waited:.1f} s after the restart")
    assert claims()[0][1] == 2  # the killed attempt counts
