"""A full disk is transient: the worker re-queues the instance with a delay instead of failing
it, and it ends ``done`` by itself once space returns (a real, small tmpfs as the outgoing
folder; real worker, real hook, real SQLite queue)."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.daemon.outcomes import TRANSIENT_RETRY_SECONDS
from osteoflag.daemon.results import Reporting
from osteoflag.daemon.worker import InferenceWorker
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Instance, InstanceState, Outbound, utcnow
from osteoflag.destination_settings import Destination
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs.derived import ModelIdentity
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.scu import Peer, send_c_store
from testkit.inference_data import dataset, radiograph, save
from tests.conftest import make_settings
from tests.helpers.dicom import radiograph as dicom_radiograph
from tests.helpers.dicom import write_in_syntax


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr}")


def _fill(folder: Path) -> Path:
    """Write until ENOSPC: the volume is now full."""
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture
def settings(tmp_path: Path, tiny_bundle: Path) -> Iterator[Settings]:
    base = make_settings(tmp_path, model={"bundle": str(tiny_bundle)})
    pacs = Destination(ae_title="PACS", host="127.0.0.1", port=4242)
    configured = base.model_copy(update={"destinations": (pacs,)})
    _mount_tmpfs(configured.outgoing_path, "512k")
    try:
        yield configured
    finally:
        subprocess.run(["umount", "-l", str(configured.outgoing_path)], check=False)


def test_a_full_disk_requeues_and_the_instance_ends_done_once_space_returns(
    tmp_path: Path, settings: Settings
) -> None:
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions: sessionmaker[Session] = session_factory(engine)
    source = save(dataset(radiograph(), bits_stored=12), tmp_path / "source.dcm")
    received = queue.Received(
        "1.2.826.0.1.3680043.8.498.7",
        "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.840.10008.1.2.1",
        "MODALITY",
        "127.0.0.1",
        str(source),
    )
    assert queue.enqueue(sessions, received)
    bundle = load_bundle(settings.model.bundle)
    worker = InferenceWorker(
        settings,
        sessions,
        Predictor(bundle, threads=1, batch_size=2),
        Reporting(settings, ModelIdentity.from_bundle(bundle)),
    )
    filler = _fill(settings.outgoing_path)

    worker.drain()
    with sessions() as session:
        row = session.scalars(select(Instance)).one()
    assert row.state is InstanceState.QUEUED
    assert "No space left on device" in (row.error or "")
    assert row.attempts == 0  # not an interrupted attempt: no poison-pill count
    waited = (row.next_attempt_at - utcnow()).total_seconds()
    assert 0 < waited <= TRANSIENT_RETRY_SECONDS
    assert worker.drain() == 0  # not due yet

    filler.unlink()  # space returns
    with sessions() as session:  # as if the delay had passed
        session.execute(update(Instance).values(next_attempt_at=utcnow()))
        session.commit()
    worker.drain()
    with sessions() as session:
        row = session.scalars(select(Instance)).one()
        kinds = sorted(o.kind for o in session.scalars(select(Outbound)))
    assert row.state is InstanceState.DONE and row.error is None
    assert kinds == ["sr", "summary"]
    engine.dispose()


def test_the_floor_leaves_room_for_what_the_worker_will_write(tmp_path: Path) -> None:
    """With room for the file but not for its SR and summary, the store is refused (0xA700)."""
    settings = make_settings(tmp_path, storage={"min_free_mb": 0})
    _mount_tmpfs(settings.incoming_path, "1m")
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    listener = StorageSCP(settings, session_factory(engine))
    listener.start()
    try:
        peer = Peer("127.0.0.1", settings.listener.port, settings.listener.ae_title)
        small = write_in_syntax(
            dicom_radiograph(rows=256, columns=256), ExplicitVRLittleEndian, tmp_path / "s.dcm"
        )  # 66 kB: it and twice that again fit in 1 MB
        large = write_in_syntax(
            dicom_radiograph(rows=600, columns=600, seed=1),
            ExplicitVRLittleEndian,
            tmp_path / "l.dcm",
        )  # 361 kB: fits, but not with twice that again for the SR and summary
        [stored] = send_c_store([small], peer, "MODALITY")
        [refused] = send_c_store([large], peer, "MODALITY")
    finally:
        listener.stop(10)
        subprocess.run(["umount", "-l", str(settings.incoming_path)], check=False)
        engine.dispose()
    assert stored.status == 0x0000
    assert refused.status == 0xA700
