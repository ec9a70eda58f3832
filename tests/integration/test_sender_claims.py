"""The sender's claims: fenced by owner, bounded by a budget counted from the claim, given
back on a stop, and kept for a read error that may clear.

Real pynetdicom Storage SCPs on loopback and a real SQLite queue in tmp_path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.db import outbound
from osteoflag.db.models import Outbound, OutboundState, utcnow
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.outbound import destination_key
from osteoflag.pacs.retry import GiveUp
from osteoflag.pacs.sender import claim_lease, send_pending
from tests.helpers.rows import produce_for, queue_in
from tests.sr_fixtures import RecordingSCP, make_dx

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
FRACTURE = Classification(Label.FRACTURE, 0.91)


def _settings(tmp_path: Path, port: int, **sender: object) -> Settings:
    return parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "database_url": "sqlite:///var/db.sqlite"},
            "sender": {"timeout_seconds": 2.0, "backoff_base_seconds": 30.0, **sender},
            "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        },
        tmp_path,
    )


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """The queue database the ``_settings`` of a test point at (overrides conftest's)."""
    with queue_in(tmp_path / "var") as factory:
        yield factory


@pytest.fixture
def pacs() -> Iterator[RecordingSCP]:
    server = RecordingSCP()
    yield server
    server.stop()


def _produce(sessions: sessionmaker[Session], settings: Settings, count: int = 1) -> None:
    """``count`` classified instances, each owing an SR and a summary image."""
    with sessions() as session:
        for _ in range(count):
            produce_for(session, make_dx(), FRACTURE, MODEL, settings)
        session.commit()


def _rows(sessions: sessionmaker[Session]) -> list[Outbound]:
    with sessions() as session:
        return list(session.scalars(select(Outbound).order_by(Outbound.id)))


def test_a_sender_whose_claim_was_taken_over_cannot_overwrite_the_new_owner(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """Sender A is taken for dead (a stalled host, a clock step), its claims are released and
    sender B claims the same rows: A's late outcomes must change nothing of B's."""
    settings = _settings(tmp_path, 4242)
    _produce(sessions, settings)
    key = destination_key(settings.destinations[0])
    lease = claim_lease(settings)
    taken = outbound.claim_due(sessions, "sender:A", key, 10, lease)
    assert len(taken) == 2
    outbound.release_claims(sessions, Outbound.lease_owner == "sender:A")
    again = outbound.claim_due(sessions, "sender:B", key, 10, lease)
    assert [row.id for row in again] == [row.id for row in taken]

    marked = outbound.mark_sent(sessions, taken[0], None)
    counted = outbound.mark_attempt_failed(sessions, taken[1], "late", lambda _: GiveUp("late"))
    outbound.release(sessions, taken)
    rows = _rows(sessions)
    assert [(row.state, row.lease_owner, row.attempts) for row in rows] == [
        (OutboundState.PENDING, "sender:B", 0)
    ] * 2
    assert all(row.next_attempt_at > utcnow() + lease / 2 for row in rows)  # B's lease stands
    assert (marked, counted) == (False, None)

    assert outbound.mark_sent(sessions, again[0], None) is True
    assert _rows(sessions)[0].state is OutboundState.SENT


class SlowToAssociate:
    """A Storage SCP that takes ``delay`` seconds to accept an association (a loaded PACS)."""

    def __init__(self, delay: float) -> None:
        self.received: list[str] = []
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[
                (evt.EVT_REQUESTED, lambda _: time.sleep(delay)),
                (evt.EVT_C_STORE, self._on_store),
            ],
        )
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_run_budget_counts_from_the_claim_so_the_lease_outlasts_the_run(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """The association eats into the run's budget: a run never sends past ``run_seconds``
    after it claimed its rows, so the claim's lease (budget + 3 timeouts) keeps a margin."""
    slow = SlowToAssociate(delay=1.5)
    try:
        settings = _settings(tmp_path, slow.port, run_seconds=1.0)
        _produce(sessions, settings)
        started = utcnow()
        report = send_pending(sessions, settings)
    finally:
        slow.stop()
    assert (report.sent, report.retried, report.failed) == (0, 0, 0)
    assert slow.received == []
    rows = _rows(sessions)
    assert all(row.state is OutboundState.PENDING and row.lease_owner is None for row in rows)
    assert all(
        row.attempts == 0 and row.next_attempt_at < started + timedelta(seconds=5) for row in rows
    )


def test_a_stop_ends_the_run_before_the_next_object_and_gives_the_rest_back(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """SIGTERM during a run: the object in flight completes, the others are released at once
    (pending, unclaimed, due) and the association is released, within one C-STORE."""
    stop = threading.Event()

    class Stopping(RecordingSCP):
        def _on_store(self, event: object) -> int:
            stop.set()  # the daemon is told to stop while this object is being stored
            return super()._on_store(event)

    pacs = Stopping()
    try:
        settings = _settings(tmp_path, pacs.port)
        _produce(sessions, settings, count=3)
        report = send_pending(sessions, settings, stop=stop)
    finally:
        pacs.stop()
    assert report.sent == 1 and len(pacs.received) == 1
    rows = _rows(sessions)
    assert [row.state for row in rows].count(OutboundState.SENT) == 1
    rest = [row for row in rows if row.state is OutboundState.PENDING]
    assert len(rest) == 5
    assert all(row.lease_owner is None and row.attempts == 0 for row in rest)
    assert all(row.next_attempt_at <= utcnow() for row in rest)


def test_a_read_error_that_may_clear_is_retried_not_failed(
    tmp_path: Path, sessions: sessionmaker[Session], pacs: RecordingSCP
) -> None:
    """Only a missing file or one that is not DICOM is a permanent failure: any other read
    error (here ELOOP; EIO, ESTALE or EMFILE alike) waits for the next attempt, and the
    object goes out once the file can be read again."""
    settings = _settings(tmp_path, pacs.port)
    _produce(sessions, settings)
    summary = Path(next(row.file_path for row in _rows(sessions) if row.kind == "summary"))
    content = summary.read_bytes()
    summary.unlink()
    summary.symlink_to(summary.name)  # a link to itself: "too many levels of symbolic links"
    report = send_pending(sessions, settings)
    assert (report.sent, report.retried, report.failed) == (1, 1, 0)
    unread = next(row for row in _rows(sessions) if row.kind == "summary")
    assert (unread.state, unread.attempts) == (OutboundState.PENDING, 1)
    assert "cannot read" in (unread.last_error or "")
    summary.unlink()
    summary.write_bytes(content)  # the storage is readable again
    later = utcnow() + timedelta(hours=1)
    assert send_pending(sessions, settings, now=later).sent == 1
    assert [row.state for row in _rows(sessions)] == [OutboundState.SENT] * 2
