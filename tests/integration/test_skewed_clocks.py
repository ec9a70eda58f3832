"""Hosts whose clocks disagree, sharing one real PostgreSQL queue: claims, leases and retries
are stamped and judged by the database's clock, so a host whose clock is hours ahead takes no
live claim over, and one whose clock is behind leaves no due row waiting.

The skew is this process's own clock (``utcnow`` as every osteoflag module reads it), moved
for the duration of the step a host with that clock would take; the database is never touched.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.daemon.finishing import Silent
from osteoflag.daemon.outcomes import TRANSIENT_RETRY_SECONDS, Outcomes
from osteoflag.db import models, queue
from osteoflag.db.models import Instance, InstanceState, Outbound, OutboundState
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import claim_lease, send_pending
from testkit.net import free_port
from tests.helpers.rows import produce_for
from tests.sr_fixtures import make_dx

SKEW = timedelta(hours=2)
LEASE = timedelta(minutes=5)
MODEL = ModelIdentity("osteoflag-test", "0.0.1", "0f" * 32, 0.5)


def _skew(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    """As if this process ran on a host whose clock is ``offset`` off: every osteoflag module
    that reads the process clock reads it moved (``monkeypatch.undo()`` puts it back)."""
    real = models.utcnow
    for name, module in list(sys.modules.items()):
        if name.startswith("osteoflag.") and getattr(module, "utcnow", None) is real:
            monkeypatch.setattr(module, "utcnow", lambda: real() + offset)


def _database_now(sessions: sessionmaker[Session]) -> datetime:
    with sessions() as session:
        return session.execute(select(func.now())).scalar_one()


def _enqueue(sessions: sessionmaker[Session], count: int) -> None:
    for index in range(count):
        received = queue.Received(
            f"2.25.9{index}", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1",
            "MOD", "127.0.0.1", f"/nonexistent/{index}.dcm",
        )  # fmt: skip
        assert queue.enqueue(sessions, received)


def _instances(sessions: sessionmaker[Session]) -> list[Instance]:
    with sessions() as session:
        return list(session.scalars(select(Instance).order_by(Instance.id)))


def test_a_host_whose_clock_is_ahead_recovers_only_leases_the_database_says_expired(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _enqueue(pg_sessions, 3)
    live = queue.claim_instances(pg_sessions, "worker:A", 2, LEASE)
    dead = queue.claim_instances(pg_sessions, "worker:dead", 1, timedelta(seconds=-1))
    assert (len(live), len(dead)) == (2, 1)

    _skew(monkeypatch, SKEW)
    assert queue.recover_expired(pg_sessions, max_attempts=3) == 1
    again = queue.claim_instances(pg_sessions, "worker:B", 10, LEASE)
    assert [row.id for row in again] == [row.id for row in dead]
    rows = _instances(pg_sessions)
    assert [(row.state, row.lease_owner) for row in rows] == [
        (InstanceState.PROCESSING, "worker:A"),
        (InstanceState.PROCESSING, "worker:A"),
        (InstanceState.PROCESSING, "worker:B"),
    ]


def test_a_host_whose_clock_is_behind_claims_what_a_host_ahead_enqueued_at_once(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _skew(monkeypatch, SKEW)  # the listener's host
    _enqueue(pg_sessions, 2)
    monkeypatch.undo()
    _skew(monkeypatch, -SKEW)  # the worker's host
    claimed = queue.claim_instances(pg_sessions, "worker:behind", 10, LEASE)
    assert len(claimed) == 2
    now = _database_now(pg_sessions)
    assert all(now < row.lease_expires_at <= now + LEASE for row in claimed)  # type: ignore[operator]


def test_an_instance_handed_back_by_a_host_ahead_is_due_by_the_database_clock(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _enqueue(pg_sessions, 1)
    _skew(monkeypatch, SKEW)
    outcomes = Outcomes(pg_sessions, "worker:ahead", Silent())
    outcomes.hold(queue.claim_instances(pg_sessions, "worker:ahead", 1, LEASE))
    outcomes.hand_back()
    [row] = _instances(pg_sessions)
    now = _database_now(pg_sessions)
    assert row.state is InstanceState.QUEUED
    assert now < row.next_attempt_at <= now + timedelta(seconds=TRANSIENT_RETRY_SECONDS)


def _sender_settings(tmp_path: Path, engine: Engine) -> Settings:
    """A destination nobody listens on: every attempt fails and is rescheduled."""
    url = engine.url.render_as_string(hide_password=False)
    return parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "database_url": url},
            "sender": {"timeout_seconds": 2.0, "deadline_seconds": 3600.0},
            "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}],
        },
        tmp_path,
    )


def _produce(sessions: sessionmaker[Session], settings: Settings) -> None:
    with sessions() as session:
        produce_for(session, make_dx(), Classification(Label.FRACTURE, 0.9), MODEL, settings)
        session.commit()


def _outbound(sessions: sessionmaker[Session]) -> list[Outbound]:
    with sessions() as session:
        return list(session.scalars(select(Outbound).order_by(Outbound.id)))


def test_a_sender_whose_clock_is_ahead_takes_no_live_claim_over(
    tmp_path: Path,
    pg_engine: Engine,
    pg_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _sender_settings(tmp_path, pg_engine)
    _produce(pg_sessions, settings)
    with pg_sessions() as session:  # sender A's claim, stamped by the database's clock
        session.execute(
            update(Outbound).values(
                lease_owner="sender:A", next_attempt_at=func.now() + claim_lease(settings)
            )
        )
        session.commit()

    _skew(monkeypatch, SKEW)
    report = send_pending(pg_sessions, settings, owner="sender:B")
    assert (report.sent, report.retried, report.failed) == (0, 0, 0)
    rows = _outbound(pg_sessions)
    assert [(row.lease_owner, row.attempts) for row in rows] == [("sender:A", 0)] * 2


def test_a_sender_whose_clock_is_ahead_schedules_retries_by_the_database_clock(
    tmp_path: Path,
    pg_engine: Engine,
    pg_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its backoff counts from the database's now, and the delivery deadline (an hour here,
    less than the skew) from the creation the database stamped: not given up early."""
    settings = _sender_settings(tmp_path, pg_engine)
    _produce(pg_sessions, settings)

    _skew(monkeypatch, SKEW)
    report = send_pending(pg_sessions, settings, owner="sender:ahead")
    assert (report.sent, report.retried, report.failed) == (0, 2, 0)
    now = _database_now(pg_sessions)
    backoff = timedelta(seconds=settings.sender.backoff_base_seconds)
    for row in _outbound(pg_sessions):
        assert (row.state, row.lease_owner, row.attempts) == (OutboundState.PENDING, None, 1)
        assert now < row.next_attempt_at <= now + backoff
