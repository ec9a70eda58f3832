"""Heartbeats: the claims of a process whose heartbeat has stopped are released by the next
live heartbeat, and nobody else's are (real SQLite queue, real produced objects)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db import clock, outbound, queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Instance, InstanceState, Outbound, Process, utcnow
from osteoflag.db.processes import STALE_SECONDS, Heartbeat, owner_name
from osteoflag.destination_settings import Destination
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity
from testkit.postgres import PostgresServer
from tests.conftest import make_settings
from tests.helpers.rows import produce_for
from tests.sr_fixtures import make_dx

LEASE = timedelta(minutes=10)


@pytest.fixture
def settings(tmp_path: Path, tiny_bundle: Path) -> Settings:
    base = make_settings(tmp_path, model={"bundle": str(tiny_bundle)})
    pacs = Destination(ae_title="PACS", host="127.0.0.1", port=4242)
    return base.model_copy(update={"destinations": (pacs,)})


def _enqueue(sessions: sessionmaker[Session], uid: str) -> None:
    received = queue.Received(
        uid, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1", "M", "x", "/x"
    )
    assert queue.enqueue(sessions, received)


def _silence(sessions: sessionmaker[Session], owner: str, seconds: float) -> None:
    """As if ``owner`` had not beaten for ``seconds`` (a SIGKILL that long ago)."""
    with sessions() as session:
        session.execute(
            update(Process)
            .where(Process.owner == owner)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )
        session.commit()


def test_a_dead_processes_claims_are_released_and_no_one_elses(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    dead = Heartbeat(sessions, owner_name("all"), "all", max_attempts=3)
    live = Heartbeat(sessions, owner_name("worker"), "worker", max_attempts=3)
    dead.beat()
    live.beat()
    for uid in ("1.2.3.1", "1.2.3.2", "1.2.3.3"):
        _enqueue(sessions, uid)
    [by_dead] = queue.claim_instances(sessions, dead.owner, 1, LEASE)
    [by_live] = queue.claim_instances(sessions, live.owner, 1, LEASE)
    [by_unknown] = queue.claim_instances(sessions, "other-host", 1, LEASE)
    model = ModelIdentity.from_bundle(load_bundle(settings.model.bundle))
    with sessions() as session:
        produce_for(session, make_dx(), Classification(Label.FRACTURE, 0.9), model, settings)
        session.commit()
    claimed = outbound.claim_due(sessions, dead.owner, "PACS@127.0.0.1:4242", 10, LEASE)
    assert len(claimed) == 2  # SR and summary

    _silence(sessions, dead.owner, STALE_SECONDS - 5)
    live.beat()
    assert queue.counts(sessions)["instances"]["processing"] == 3  # not silent for long enough

    _silence(sessions, dead.owner, STALE_SECONDS + 1)
    live.beat()
    with sessions() as session:
        rows = {row.id: row for row in session.scalars(select(Instance))}
        objects = session.scalars(select(Outbound)).all()
        processes = set(session.scalars(select(Process.owner)))
    assert rows[by_dead.id].state is InstanceState.QUEUED and rows[by_dead.id].attempts == 1
    assert rows[by_live.id].state is InstanceState.PROCESSING
    assert rows[by_unknown.id].lease_owner == "other-host"  # no heartbeat: only its lease counts
    assert all(row.lease_owner is None and row.next_attempt_at <= utcnow() for row in objects)
    assert processes == {live.owner}
    assert len(outbound.claim_due(sessions, live.owner, "PACS@127.0.0.1:4242", 10, LEASE)) == 2


def test_a_graceful_stop_forgets_the_process(sessions: sessionmaker[Session]) -> None:
    heartbeat = Heartbeat(sessions, owner_name("sender"), "sender", max_attempts=3)
    heartbeat.beat()
    heartbeat.beat()
    with sessions() as session:
        assert list(session.scalars(select(Process.owner))) == [heartbeat.owner]
    heartbeat.stop()
    with sessions() as session:
        assert list(session.scalars(select(Process.owner))) == []


def test_a_host_whose_clock_is_behind_is_not_taken_for_dead_on_postgresql(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Split roles on PostgreSQL: a worker host 20 s behind the sender's stamps and is judged
    by the database's clock, so its claims stay its own."""
    engine = make_engine(postgres.database())
    migrate(engine)
    sessions = session_factory(engine)
    worker = Heartbeat(sessions, owner_name("worker"), "worker", max_attempts=3)
    sender = Heartbeat(sessions, owner_name("sender"), "sender", max_attempts=3)
    _enqueue(sessions, "1.2.3.1")
    assert len(queue.claim_instances(sessions, worker.owner, 1, LEASE)) == 1
    host_clock = clock.utcnow
    monkeypatch.setattr(clock, "utcnow", lambda: host_clock() - timedelta(seconds=20))
    worker.beat()  # on the host whose clock is behind
    monkeypatch.undo()
    sender.beat()
    with sessions() as session:
        row = session.scalars(select(Instance)).one()
        owners = set(session.scalars(select(Process.owner)))
    engine.dispose()
    assert (row.state, row.lease_owner) == (InstanceState.PROCESSING, worker.owner)
    assert owners == {worker.owner, sender.owner}


def test_a_stop_that_leaves_claims_lets_others_release_them(
    sessions: sessionmaker[Session],
) -> None:
    """A worker whose batch outlasts the stop's grace still holds its claims when the
    process ends: its row must stay, to go stale like a crashed process's."""
    stopped = Heartbeat(sessions, owner_name("worker"), "worker", max_attempts=3)
    live = Heartbeat(sessions, owner_name("worker"), "worker", max_attempts=3)
    stopped.beat()
    live.beat()
    _enqueue(sessions, "1.2.3.9")
    [claimed] = queue.claim_instances(sessions, stopped.owner, 1, LEASE)
    stopped.stop()

    _silence(sessions, stopped.owner, STALE_SECONDS + 1)
    live.beat()
    with sessions() as session:
        instance = session.get(Instance, claimed.id)
        assert instance is not None
        assert (instance.state, instance.lease_owner) == (InstanceState.QUEUED, None)
        assert list(session.scalars(select(Process.owner))) == [live.owner]
