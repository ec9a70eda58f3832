"""Past one machine: listener, three workers and a sender as processes on one PostgreSQL.

300 radiographs are sent to the listener while three ``serve --role worker`` processes
drain the queue; one worker is SIGKILLed while it holds a claimed batch. Its lease
expires, another worker re-claims the rows, and every instance ends ``done`` exactly
once (one terminal event each in the append-only ``events`` table), and a separate
``serve --role sender`` delivers each SR to the destination exactly once. Sweeps and
sender runs are set far apart, so pick-up relies on NOTIFY between the processes.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Event, Instance, InstanceState
from osteoflag.pacs import status
from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, write_config
from testkit.net import free_port
from testkit.postgres import PostgresServer
from testkit.wait import wait_for
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.helpers.web import WebClient
from tests.sr_fixtures import RecordingSCP

COUNT = 300
WORKERS = 3


def _process(
    folder: Path,
    url: str,
    storage: Path,
    bundle: Path,
    port: int,
    role: str,
    pacs: int,
    web: int = 0,
) -> DaemonProcess:
    folder.mkdir()
    sections = {
        "listener": {"port": port},
        "web": {"port": web},
        "storage": {"path": str(storage), "database_url": url, "min_free_mb": 1},
        "model": {"bundle": str(bundle), "threads": 1, "batch_size": 6},
        # No sweep within the test: pick-up relies on NOTIFY and on recovery's own wake-up.
        "worker": {"sweep_seconds": 600.0, "lease_seconds": 5.0, "max_attempts": 3},
        "sender": {"interval_seconds": 600.0},
        "report": {"summary_image": False},
        "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs}],
    }
    return DaemonProcess(write_config(folder, sections), port, role=role)


def _victim_rows(sessions: sessionmaker[Session], pid: int) -> list[int]:
    with sessions() as session:
        return list(
            session.scalars(
                select(Instance.id).where(
                    Instance.state == InstanceState.PROCESSING,
                    Instance.lease_owner.like(f"worker:%:{pid}:%"),
                )
            )
        )


def test_three_workers_one_killed_process_every_instance_exactly_once(
    tmp_path: Path, postgres: PostgresServer, tiny_bundle: Path
) -> None:
    url = postgres.database()
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    storage = tmp_path / "shared"
    port = free_port()
    sources = tmp_path / "sources"
    sources.mkdir()
    template = radiograph(bits=12)
    files = []
    for index in range(COUNT):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(write_in_syntax(template, ExplicitVRLittleEndian, sources / f"{index}.dcm"))
    pacs = RecordingSCP()
    probes = {"listener": free_port(), "sender": free_port()}
    listener = _process(
        tmp_path / "listener", url, storage, tiny_bundle, port, "listener", pacs.port,
        probes["listener"],
    )  # fmt: skip
    workers = [
        _process(
            tmp_path / f"worker{i}", url, storage, tiny_bundle, free_port(), "worker", pacs.port
        )
        for i in range(WORKERS)
    ]
    sender = _process(
        tmp_path / "sender", url, storage, tiny_bundle, free_port(), "sender", pacs.port,
        probes["sender"],
    )  # fmt: skip
    processes = [listener, *workers, sender]
    pool_for_sends = ThreadPoolExecutor(1)
    try:
        with ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(lambda process: process.start(120), processes))
        for role, web in probes.items():  # processes without the model still answer probes
            health = WebClient(f"http://127.0.0.1:{web}").get("/healthz")
            assert (health.status, json.loads(health.body)) == (
                200,
                {"status": "ok", "database": True, role: True},
            )
        sending = pool_for_sends.submit(
            send_c_store, files, Peer("127.0.0.1", port, "OSTEOFLAG"), "MOD"
        )
        victim = workers[0]
        assert victim.process is not None
        pid = victim.process.pid
        claimed = wait_for(lambda: _victim_rows(sessions, pid), timeout=60)
        victim.kill()
        orphaned = _victim_rows(sessions, pid)
        outcomes = sending.result(timeout=180)
        assert [o.status for o in outcomes] == [status.SUCCESS] * COUNT
        wait_for(lambda: queue.counts(sessions)["instances"]["done"] == COUNT, timeout=120)
        wait_for(lambda: queue.counts(sessions)["outbound"]["sent"] == COUNT, timeout=120)
    finally:
        pacs.stop()
        pool_for_sends.shutdown(wait=True)
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                process.terminate()

    assert claimed and orphaned, "the victim was killed while holding a claimed batch"
    with sessions() as session:
        terminal = session.execute(
            select(Event.instance_id, func.count())
            .where(Event.action.in_(["done", "failed", "skipped"]))
            .group_by(Event.instance_id)
        ).all()
        owners = set(session.scalars(select(Instance.lease_owner)))
        retried = {
            row.id: row.attempts
            for row in session.scalars(select(Instance).where(Instance.id.in_(orphaned)))
        }
        finished_by = session.execute(
            text("SELECT count(DISTINCT model) FROM instances WHERE state = 'done'")
        ).scalar()
    assert len(terminal) == COUNT
    assert all(count == 1 for _, count in terminal), "an instance was completed twice"
    assert owners == {None}
    assert set(retried) == set(orphaned) and set(retried.values()) == {2}
    assert finished_by == 1
    assert len(pacs.received) == len(set(pacs.received)) == COUNT
    logs = "".join(worker.log_path.read_text() for worker in workers[1:])
    assert re.search(r'"message": "recovered interrupted instances"', logs)
    engine.dispose()
