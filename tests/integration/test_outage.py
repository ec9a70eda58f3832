"""A PACS outage, end to end on the delivery side: backoff, recovery, deadline, requeue.

The destination is a real pynetdicom Storage SCP on a fixed loopback port that the test
stops and starts again; the sender runs in-process with small backoff values, and
``osteoflag requeue`` runs as the real CLI against the same config and database.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, load_settings
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Outbound, utcnow
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import send_pending
from testkit.daemon import osteoflag, write_config
from testkit.net import free_port
from testkit.wait import wait_for
from tests.helpers.rows import produce_for
from tests.sr_fixtures import RecordingSCP, make_dx

MODEL = ModelIdentity("osteoflag-test", "6.0.0", "ab" * 32, 0.5)
BASE, CAP = 1.0, 8.0


def _config(tmp_path: Path, port: int, **sender: float) -> Path:
    return write_config(
        tmp_path,
        {
            "storage": {
                "path": str(tmp_path / "var"),
                "database_url": f"sqlite:///{tmp_path / 'var' / 'osteoflag.db'}",
            },
            "sender": {
                "timeout_seconds": 2.0,
                "backoff_base_seconds": BASE,
                "backoff_cap_seconds": CAP,
                **sender,
            },
            "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        },
    )


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'osteoflag.db'}")
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def _produce(sessions: sessionmaker[Session], settings: Settings, count: int = 2) -> set[str]:
    """``count`` classified instances with their SR and summary owed to the destination."""
    uids: set[str] = set()
    with sessions() as session:
        for seed in range(count):
            source = make_dx(seed=seed, rows=128, columns=96)
            result = Classification(Label.FRACTURE, 0.8)
            rows = produce_for(session, source, result, MODEL, settings)
            uids |= {row.sop_instance_uid for row in rows}
        session.commit()
    return uids


def _rows(sessions: sessionmaker[Session]) -> list[Outbound]:
    with sessions() as session:
        return list(session.scalars(select(Outbound).order_by(Outbound.id)).all())


def _next_attempt(sessions: sessionmaker[Session]) -> datetime:
    return max(row.next_attempt_at for row in _rows(sessions))


def test_outage_backs_off_exponentially_up_to_the_cap_then_delivers_once(
    tmp_path: Path, port: int, sessions: sessionmaker[Session]
) -> None:
    settings = load_settings(_config(tmp_path, port))
    produced = _produce(sessions, settings)
    moment = utcnow()
    for delay in (1, 2, 4, 8, 8, 8):  # the PACS is down: every due run fails and reschedules
        before = utcnow()
        report = send_pending(sessions, settings, now=moment)
        after = utcnow()
        assert (report.sent, report.retried, report.failed) == (0, len(produced), 0)
        assert send_pending(sessions, settings, now=moment).retried == 0  # not due yet
        moment = _next_attempt(sessions)
        # The backoff counts from the failed attempt, which happened between before and after.
        assert before + timedelta(seconds=delay) <= moment <= after + timedelta(seconds=delay)
    rows = _rows(sessions)
    assert {(row.state.value, row.attempts) for row in rows} == {("pending", 6)}
    unreachable = (
        f"association with PACS@127.0.0.1:{port} was not established"
        " (unreachable, aborted or timed out)"
    )
    assert all(row.last_error == unreachable for row in rows)

    pacs = RecordingSCP(port=port, ae_title="PACS")
    try:
        assert send_pending(sessions, settings, now=moment).sent == len(produced)
        assert send_pending(sessions, settings, now=moment + timedelta(days=1)).sent == 0
    finally:
        pacs.stop()
    assert sorted(pacs.received) == sorted(produced)
    assert {row.state.value for row in _rows(sessions)} == {"sent"}


def test_a_pacs_that_refuses_our_ae_title_is_named_in_the_rows_error(
    tmp_path: Path, port: int, sessions: sessionmaker[Session]
) -> None:
    settings = load_settings(_config(tmp_path, port))
    _produce(sessions, settings)
    pacs = RecordingSCP(port=port, ae_title="PACS", calling_aets=["SOMEONE-ELSE"])
    try:
        assert send_pending(sessions, settings).retried == 2 * 2  # SR and summary of each
    finally:
        pacs.stop()
    assert pacs.received == []
    for row in _rows(sessions):
        assert row.state.value == "pending"
        assert row.last_error is not None
        assert "rejected: " in row.last_error
        assert row.last_error.endswith(
            "Calling AE title not recognised (result 1, source 1, reason 3)"
        )


def test_past_the_deadline_fails_with_the_reason_and_cli_requeue_delivers(
    tmp_path: Path, port: int, sessions: sessionmaker[Session]
) -> None:
    config = _config(tmp_path, port, backoff_base_seconds=0.1, deadline_seconds=1.0)
    settings = load_settings(config)
    produced = _produce(sessions, settings)

    def given_up() -> bool:
        send_pending(sessions, settings)
        return {row.state.value for row in _rows(sessions)} == {"failed"}

    wait_for(given_up, timeout=20, interval=0.1)
    for row in _rows(sessions):
        assert row.attempts >= 2, "it was retried before the deadline"
        assert row.last_error is not None
        assert row.last_error.startswith("delivery deadline of 0:00:01 passed")
        assert row.last_error.endswith("was not established (unreachable, aborted or timed out)")
    assert send_pending(sessions, settings, now=utcnow() + timedelta(days=1)).sent == 0

    pacs = RecordingSCP(port=port, ae_title="PACS")
    try:
        requeued = osteoflag("requeue", config=config)
        assert requeued.returncode == 0, requeued.stderr
        assert '"outbound": 4' in requeued.stdout
        assert {(row.state.value, row.attempts) for row in _rows(sessions)} == {("pending", 0)}
        assert send_pending(sessions, settings).sent == len(produced)
    finally:
        pacs.stop()
    assert sorted(pacs.received) == sorted(produced)  # the same UIDs, each once
    assert {row.state.value for row in _rows(sessions)} == {"sent"}
