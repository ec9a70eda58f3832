"""The queue on a real PostgreSQL server (and SQLite where the contrast matters).

Schema parity after migrations, disjoint concurrent claims (``FOR UPDATE SKIP LOCKED``),
aware datetimes and string enums round-tripping, lease expiry and recovery, start-up
recovery that leaves live leases alone, and two senders never sending one object twice.
"""

from __future__ import annotations

import threading
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.daemon.results import Reporting
from osteoflag.daemon.roles import Role
from osteoflag.daemon.service import Daemon
from osteoflag.daemon.worker import InferenceWorker
from osteoflag.db import notify, queue
from osteoflag.db.engine import make_engine, migrate
from osteoflag.db.models import Base, Instance, InstanceState, Outbound, OutboundState
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.labels import Label
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import send_pending
from testkit.inference_data import dataset, radiograph, save
from testkit.net import free_port
from testkit.postgres import PostgresServer
from testkit.wait import wait_for
from tests.helpers.rows import produce
from tests.sr_fixtures import RecordingSCP, make_dx

MODEL = ModelIdentity("osteoflag-test", "0.0.1", "0f" * 32, 0.5)


def _enqueue(sessions: sessionmaker[Session], count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        received = queue.Received(
            f"2.25.{index + 1}", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1",
            "MOD", "127.0.0.1", f"/nonexistent/{index}.dcm",
        )  # fmt: skip
        assert queue.enqueue(sessions, received)


@pytest.mark.parametrize("engine_kind", ["sqlite", "postgresql"])
def test_migrated_schema_equals_the_models(
    engine_kind: str, tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.database() if engine_kind == "postgresql" else f"sqlite:///{tmp_path / 'q.db'}"
    engine = make_engine(url)
    migrate(engine)
    migrate(engine)  # idempotent: every process runs it at start
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_concurrent_claims_are_disjoint_and_cover_the_queue(
    pg_sessions: sessionmaker[Session],
) -> None:
    _enqueue(pg_sessions, 120)
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def claim_all(owner: str) -> None:
        mine: list[int] = []
        start.wait()
        while rows := queue.claim_instances(pg_sessions, owner, 7, timedelta(minutes=5)):
            mine.extend(row.id for row in rows)
        claimed[owner] = mine

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ids = [row_id for rows in claimed.values() for row_id in rows]
    assert len(ids) == len(set(ids)) == 120
    assert sum(1 for rows in claimed.values() if rows) >= 2  # they really competed
    with pg_sessions() as session:
        rows = session.scalars(select(Instance)).all()
    assert {row.state for row in rows} == {InstanceState.PROCESSING}
    assert all(row.attempts == 1 for row in rows)
    assert all(row.lease_expires_at is not None for row in rows)
    assert all(row.lease_expires_at.tzinfo is not None for row in rows)  # type: ignore[union-attr]
    assert all(row.received_at.tzinfo is not None for row in rows)


def test_enums_are_stored_as_their_string_values(
    pg_engine: Engine, pg_sessions: sessionmaker[Session]
) -> None:
    _enqueue(pg_sessions, 1)
    with pg_engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT state, pg_typeof(state)::text, pg_typeof(received_at)::text FROM instances"
            )
        ).one()
    assert tuple(row) == ("queued", "character varying", "timestamp with time zone")


def test_an_expired_lease_is_recovered_and_the_dead_owner_cannot_finish(
    pg_sessions: sessionmaker[Session],
) -> None:
    _enqueue(pg_sessions, 3)
    dead = queue.claim_instances(pg_sessions, "dead", 10, timedelta(seconds=-1))
    live = queue.claim_instances(pg_sessions, "live", 10, timedelta(minutes=5))
    assert len(dead) == 3 and live == []

    assert queue.recover_expired(pg_sessions, max_attempts=3) == 3
    again = queue.claim_instances(pg_sessions, "live", 10, timedelta(minutes=5))
    assert sorted(row.id for row in again) == sorted(row.id for row in dead)
    assert all(row.attempts == 2 for row in again)

    result = queue.Result(0.9, "fracture", 0.5, "m@1", 1.0)
    with pg_sessions() as session:
        assert not queue.complete(session, dead[0].id, "dead", result)
        assert queue.complete(session, again[0].id, "live", result)
        session.commit()
    with pg_sessions() as session:
        row = session.get(Instance, again[0].id)
    assert row is not None and row.state is InstanceState.DONE
    assert row.finished_at is not None and row.finished_at.tzinfo is UTC


def _worker_settings(tmp_path: Path, url: str, bundle: Path) -> Settings:
    return parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "database_url": url, "min_free_mb": 1},
            "model": {"bundle": str(bundle)},
        },
        tmp_path,
    )


def test_a_starting_worker_leaves_live_leases_alone_on_postgresql(
    tmp_path: Path,
    postgres: PostgresServer,
    pg_sessions: sessionmaker[Session],
    pg_engine: Engine,
    tiny_bundle: Path,
) -> None:
    _enqueue(pg_sessions, 4)
    busy = queue.claim_instances(pg_sessions, "other-host", 2, timedelta(minutes=5))
    stale = queue.claim_instances(pg_sessions, "dead-host", 2, timedelta(seconds=-1))
    url = pg_engine.url.render_as_string(hide_password=False)
    for role in (Role.WORKER, Role.ALL):
        daemon = Daemon(_worker_settings(tmp_path, url, tiny_bundle), role)
        daemon._recover_at_start()
        daemon.engine.dispose()
    with pg_sessions() as session:
        rows = {row.id: row for row in session.scalars(select(Instance))}
    assert all(rows[row.id].lease_owner == "other-host" for row in busy)
    assert all(rows[row.id].state is InstanceState.QUEUED for row in stale)


def test_listener_and_sender_processes_do_not_load_the_model(
    tmp_path: Path, pg_engine: Engine
) -> None:
    url = pg_engine.url.render_as_string(hide_password=False)
    missing = tmp_path / "no-bundle-here"
    listener = Daemon(_worker_settings(tmp_path, url, missing), Role.LISTENER)
    sender = Daemon(_worker_settings(tmp_path, url, missing), Role.SENDER)
    assert listener.worker is None and listener.listener is not None
    assert listener.subscribers == []
    assert sender.worker is None and sender.listener is None and sender.sender is not None
    assert len(sender.subscribers) == 1  # for results, not for stores
    for daemon in (listener, sender):
        daemon.engine.dispose()


def test_the_all_in_one_sqlite_daemon_still_recovers_everything(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'q.db'}"
    settings = _worker_settings(tmp_path, url, tiny_bundle)
    daemon = Daemon(settings, Role.ALL)
    migrate(daemon.engine)
    _enqueue(daemon.sessions, 2)
    queue.claim_instances(daemon.sessions, "crashed-self", 2, timedelta(minutes=5))
    daemon._recover_at_start()
    assert queue.counts(daemon.sessions)["instances"]["queued"] == 2
    daemon.engine.dispose()


def test_two_senders_never_send_the_same_object(
    tmp_path: Path, pg_engine: Engine, pg_sessions: sessionmaker[Session]
) -> None:
    pacs = RecordingSCP()
    try:
        url = pg_engine.url.render_as_string(hide_password=False)
        settings = parse_settings(
            {
                "storage": {"path": str(tmp_path / "var"), "database_url": url},
                "sender": {"batch_size": 5, "timeout_seconds": 5.0},
                "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
            },
            tmp_path,
        )
        for index in range(15):
            source = make_dx()
            with pg_sessions() as session:
                instance = Instance(
                    sop_instance_uid=source.SOPInstanceUID,
                    sop_class_uid=source.SOPClassUID,
                    transfer_syntax_uid=str(source.file_meta.TransferSyntaxUID),
                    calling_ae="MOD",
                    peer_address="127.0.0.1",
                    file_path=f"/nonexistent/{index}",
                    state=InstanceState.DONE,
                )
                session.add(instance)
                session.flush()
                result = Classification(Label.FRACTURE, 0.9)
                produce(session, instance, source, result, MODEL, settings)
                session.commit()
        start = threading.Barrier(2)

        def sender() -> None:
            start.wait()
            while send_pending(pg_sessions, settings).sent:
                pass

        threads = [threading.Thread(target=sender) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        pacs.stop()
    with pg_sessions() as session:
        states = set(session.scalars(select(Outbound.state)))
    assert states == {OutboundState.SENT}
    assert len(pacs.received) == len(set(pacs.received)) == 30


def test_a_notification_wakes_a_subscribed_worker(pg_engine: Engine) -> None:
    woken = threading.Event()
    subscriber = notify.Subscriber(pg_engine, woken.set)
    subscriber.start()
    try:
        wait_for(woken.is_set)  # listening from here on
        woken.clear()
        notify.notifier(pg_engine)()
        wait_for(woken.is_set, timeout=10)
    finally:
        subscriber.stop(timeout=5)


def test_a_failed_notification_does_not_fail_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    notify.notifier(unreachable)()  # the store was committed: this must not raise
    unreachable.dispose()
    assert any(record.message.startswith("notification not sent") for record in caplog.records)


def test_sloppy_source_values_do_not_fail_the_result(
    pg_sessions: sessionmaker[Session], tmp_path: Path, tiny_bundle: Path
) -> None:
    """Values the row keeps for the page and drift watch, which PostgreSQL (unlike SQLite)
    would refuse whole: longer than their column, or holding a NUL."""
    settings = parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "min_free_mb": 1},
            "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}],
        },
        tmp_path,
    )
    sloppy = {
        "2.25.31": {"BodyPartExamined": "HAND " * 15},
        "2.25.32": {"StudyInstanceUID": "1.2." + "3" * 70},
        "2.25.33": {"SeriesInstanceUID": "1.2.3\x004", "Manufacturer": "ACME\x00X"},
    }
    for uid, attributes in sloppy.items():
        path = save(dataset(radiograph(), bits_stored=12, **attributes), tmp_path / f"{uid}.dcm")
        received = queue.Received(
            uid, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1", "MOD", "127.0.0.1",
            str(path),
        )  # fmt: skip
        assert queue.enqueue(pg_sessions, received)
    bundle = load_bundle(tiny_bundle)
    reporting = Reporting(settings, ModelIdentity.from_bundle(bundle))
    predictor = Predictor(bundle, threads=1, batch_size=4)
    InferenceWorker(settings, pg_sessions, predictor, reporting).drain()
    with pg_sessions() as session:
        rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
        owed = session.scalar(select(func.count()).select_from(Outbound))
    assert {uid: row.state for uid, row in rows.items()} == dict.fromkeys(
        sloppy, InstanceState.DONE
    )
    assert owed == 2 * len(sloppy)  # an SR and a summary image each
    assert rows["2.25.31"].body_part == ("HAND " * 15)[:64]
    assert rows["2.25.32"].study_instance_uid is None  # a cut UID would name another study
    assert (rows["2.25.33"].series_instance_uid, rows["2.25.33"].manufacturer) == (None, "ACMEX")


def test_the_listen_connection_carries_keepalives_and_a_connect_timeout(
    pg_engine: Engine,
) -> None:
    """A connection left half-open by a partition sends no reset: only TCP keepalives end it,
    so the subscriber reconnects instead of going without wake-ups until restarted."""
    import psycopg

    with psycopg.connect(notify.listen_conninfo(pg_engine)) as connection:
        used = {
            option.keyword.decode(): option.val.decode()
            for option in connection.pgconn.info
            if option.val is not None
        }
        assert connection.execute("SELECT 1").fetchone() == (1,)
    assert {key: used.get(key) for key in ("connect_timeout", "keepalives")} == {
        "connect_timeout": "10",
        "keepalives": "1",
    }
    silent = ("keepalives_idle", "keepalives_interval", "keepalives_count")
    idle, interval, count = (int(used[key]) for key in silent)
    assert idle + interval * count <= 60  # a dead peer noticed within a minute
