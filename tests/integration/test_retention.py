"""Retention against a real SQLite queue and real files: what goes, what must stay.

Age is moved by passing ``now`` to ``remove_expired``, never by sleeping.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import ColumnElement, select, text, update
from sqlalchemy.orm import Mapped, Session, sessionmaker

from osteoflag.config import RetentionSettings, Settings, parse_settings
from osteoflag.daemon import retention
from osteoflag.daemon.retention import (
    ORPHAN_AGE,
    remove_expired,
    remove_orphans,
    remove_unrecorded,
)
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Event, Instance, InstanceState, Outbound, OutboundState, utcnow
from osteoflag.db.outbound import Produced, record_shadow
from osteoflag.db.outbound import requeue_failed as requeue_failed_outbound
from osteoflag.errors import ConfigError
from osteoflag.pacs.storage import conflict_path, data_set_digest, instance_path, write_atomically
from osteoflag.settings_fields import CENTURY_DAYS
from testkit.postgres import PostgresServer
from testkit.wait import wait_for

RETENTION = RetentionSettings(max_age_days=30.0)
LATER = timedelta(days=31)


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, settings: Settings) -> Iterator[sessionmaker[Session]]:
    """The queue on SQLite (the settings' file) and on the run's private PostgreSQL server."""
    if request.param == "sqlite":
        url = settings.storage.database_url
    else:
        url = request.getfixturevalue("postgres").database()
    engine = make_engine(url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def _instance(
    sessions: sessionmaker[Session],
    settings: Settings,
    state: InstanceState,
    outbound: tuple[OutboundState, ...] = (),
    age: timedelta = timedelta(0),
) -> int:
    """An instance row with its received file and one produced file per outbound state."""
    uid = f"1.2.826.0.1.3680043.10.1.{len(list(settings.incoming_path.rglob('*.dcm'))) + 1}"
    path = instance_path(settings.incoming_path, uid, data_set_digest(b"received"))
    write_atomically(path, b"received")
    with sessions() as session:
        row = Instance(
            sop_instance_uid=uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            calling_ae="MODALITY",
            peer_address="127.0.0.1:104",
            file_path=str(path),
            state=state,
            received_at=utcnow() - age,
            error=None if state is InstanceState.DONE else "a reason",
        )
        session.add(row)
        session.flush()
        for n, outbound_state in enumerate(outbound):
            produced = settings.outgoing_path / "sr" / f"{uid}.{n}.dcm"
            write_atomically(produced, b"produced")
            session.add(
                Outbound(
                    instance_id=row.id,
                    kind="sr",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22",
                    sop_instance_uid=f"{uid}.{n}",
                    file_path=str(produced),
                    destination=f"PACS{n}@127.0.0.1:4242",
                    state=outbound_state,
                )
            )
        session.commit()
        return row.id


def _files(sessions: sessionmaker[Session], instance_id: int) -> list[Path]:
    with sessions() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        rows = session.scalars(select(Outbound).where(Outbound.instance_id == instance_id)).all()
        return [Path(instance.file_path), *(Path(row.file_path) for row in rows)]


def _removed(sessions: sessionmaker[Session], instance_id: int) -> bool:
    with sessions() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        rows = session.scalars(select(Outbound).where(Outbound.instance_id == instance_id)).all()
        marks = {instance.removed_at is not None, *(row.removed_at is not None for row in rows)}
    files = {path.exists() for path in _files(sessions, instance_id)}
    assert len(marks) == 1 and len(files) == 1, "rows and files disagree"
    return marks == {True} and files == {False}


def test_removes_files_of_finished_delivered_instances_and_keeps_their_rows(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    sent = _instance(sessions, settings, InstanceState.DONE, (OutboundState.SENT,) * 2)
    gave_up = _instance(sessions, settings, InstanceState.DONE, (OutboundState.FAILED,))
    skipped = _instance(sessions, settings, InstanceState.SKIPPED)
    failed = _instance(sessions, settings, InstanceState.FAILED)

    report = remove_expired(sessions, RETENTION, now=utcnow() + LATER)

    assert (report.instances, report.files) == (4, 3 + 2 + 1 + 1)
    for instance_id in (sent, gave_up, skipped, failed):
        assert _removed(sessions, instance_id)
    with sessions() as session:
        events = session.scalars(select(Event).where(Event.action == "files_removed")).all()
        states = session.scalars(select(Instance.state)).all()
    assert sorted(event.instance_id for event in events) == sorted((sent, gave_up, skipped, failed))
    assert events[0].detail == "3 files"
    assert sorted(states) == sorted(["done", "done", "skipped", "failed"])
    assert remove_expired(sessions, RETENTION, now=utcnow() + LATER).instances == 0


def test_never_removes_what_is_pending_unfinished_or_young(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    pending = _instance(
        sessions, settings, InstanceState.DONE, (OutboundState.SENT, OutboundState.PENDING)
    )
    queued = _instance(sessions, settings, InstanceState.QUEUED)
    processing = _instance(sessions, settings, InstanceState.PROCESSING)
    young = _instance(sessions, settings, InstanceState.DONE, (OutboundState.SENT,))
    old = _instance(sessions, settings, InstanceState.DONE, (OutboundState.SENT,), age=LATER)

    report = remove_expired(sessions, RETENTION)

    assert report.instances == 1
    assert _removed(sessions, old)
    for kept in (pending, queued, processing, young):
        assert not _removed(sessions, kept)
    later = remove_expired(sessions, RETENTION, now=utcnow() + LATER)
    assert later.instances == 1  # only ``young`` has come of age
    assert _removed(sessions, young)
    for kept in (pending, queued, processing):
        assert not _removed(sessions, kept)


def test_batch_size_bounds_one_run(sessions: sessionmaker[Session], settings: Settings) -> None:
    for _ in range(5):
        _instance(sessions, settings, InstanceState.SKIPPED)
    small = RetentionSettings(max_age_days=1.0, batch_size=2)
    runs = [remove_expired(sessions, small, now=utcnow() + LATER).instances for _ in range(4)]
    assert runs == [2, 2, 1, 0]


def test_requeue_leaves_removed_rows_alone(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    removed = _instance(sessions, settings, InstanceState.FAILED)
    kept = _instance(sessions, settings, InstanceState.FAILED, age=-LATER)
    delivery = _instance(sessions, settings, InstanceState.DONE, (OutboundState.FAILED,))
    remove_expired(sessions, RETENTION, now=utcnow() + LATER)

    assert queue.requeue_failed(sessions) == 1
    assert requeue_failed_outbound(sessions) == 0
    with sessions() as session:
        assert session.get(Instance, kept).state is InstanceState.QUEUED  # type: ignore[union-attr]
        assert session.get(Instance, removed).state is InstanceState.FAILED  # type: ignore[union-attr]
    assert _removed(sessions, delivery)


def test_an_outbound_requeue_in_flight_is_waited_for_on_postgresql(
    postgres: PostgresServer, settings: Settings
) -> None:
    engine = make_engine(postgres.database())
    migrate(engine)
    sessions = session_factory(engine)
    delivery = _instance(sessions, settings, InstanceState.DONE, (OutboundState.FAILED,))
    reports: list[int] = []
    with sessions() as requeue:  # another process's requeue, not yet committed
        requeue.execute(
            update(Outbound)
            .where(Outbound.instance_id == delivery)
            .values(state=OutboundState.PENDING)
        )
        retention = threading.Thread(
            target=lambda: reports.append(
                remove_expired(sessions, RETENTION, now=utcnow() + LATER).instances
            )
        )
        retention.start()
        with engine.connect() as watcher:  # retention waits for the requeue's row lock
            wait_for(
                lambda: watcher.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
            )
        requeue.commit()
    retention.join(timeout=30)
    engine.dispose()
    assert reports == [0]
    assert all(path.exists() for path in _files(sessions, delivery))


@pytest.mark.parametrize("value", [0, -1, "thirty", math.inf, math.nan, 1e6])
def test_bad_max_age_is_a_config_error_naming_the_key(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"retention\.max_age_days"):
        parse_settings({"retention": {"max_age_days": value}}, tmp_path)


@pytest.mark.parametrize(("key", "value"), [("interval_seconds", math.inf), ("batch_size", 10**20)])
def test_an_endless_interval_or_batch_is_a_config_error_naming_the_key(
    tmp_path: Path, key: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=rf"retention\.{key}"):
        parse_settings({"retention": {key: value}}, tmp_path)


def test_the_longest_accepted_settings_run(
    sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    longest = {"max_age_days": CENTURY_DAYS, "interval_seconds": CENTURY_DAYS * 86400.0}
    retention_settings = parse_settings(
        {"retention": {**longest, "batch_size": 1_000_000}}, tmp_path
    ).retention
    instance_id = _instance(sessions, settings, InstanceState.DONE, age=timedelta(days=3650))
    assert remove_expired(sessions, retention_settings) == retention.RetentionReport()
    assert not _removed(sessions, instance_id)


def test_removes_conflicting_copies_with_their_instance(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    instance_id = _instance(sessions, settings, InstanceState.DONE)
    [source] = _files(sessions, instance_id)
    copy = conflict_path(source, "ab" * 32)
    write_atomically(copy, b"another data set with the same SOP Instance UID")
    report = remove_expired(sessions, RETENTION, now=utcnow() + LATER)
    assert (report.instances, report.files) == (1, 2)
    assert _removed(sessions, instance_id) and not copy.exists()


def _aged(path: Path, data: bytes, age: timedelta) -> Path:
    write_atomically(path, data)
    then = time.time() - age.total_seconds()
    os.utime(path, (then, then))
    return path


def test_removes_old_files_no_row_names_and_nothing_else(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    old = ORPHAN_AGE + timedelta(hours=1)
    instance = _instance(sessions, settings, InstanceState.DONE)
    [source] = _files(sessions, instance)
    os.utime(source, (time.time() - old.total_seconds(),) * 2)
    kept = [
        source,
        _aged(conflict_path(source, "cd" * 32), b"other copy", old),
        # named in the layout without a digest: its UID has a row
        _aged(source.parent / f"{_uid(sessions, instance)}.dcm", b"older layout", old),
    ]
    young = _aged(instance_path(settings.incoming_path, "1.2.3.4", "ab" * 32), b"x", timedelta(0))
    orphans = [
        _aged(instance_path(settings.incoming_path, "1.2.3.5", "ab" * 32), b"orphan", old),
        _aged(settings.incoming_path / "ab" / "1.2.3.6.dcm", b"older layout orphan", old),
        _aged(source.parent / ".partial-k2j4", b"torn write", old),
        _aged(source.parent / ".orphan-1.2.3.7.dcm", b"set aside by a crash", old),
    ]
    assert remove_orphans(sessions, settings.incoming_path) == len(orphans)
    assert not any(path.exists() for path in orphans)
    assert all(path.exists() for path in [*kept, young])
    assert remove_orphans(sessions, settings.incoming_path) == 0


def test_a_copy_stored_while_its_instance_was_removed_goes_with_the_orphans(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A conflicting copy written after retention listed its instance's copies stays behind
    the removal; its row names its UID for good, yet nothing will ever read or remove it."""
    instance = _instance(sessions, settings, InstanceState.DONE)
    [source] = _files(sessions, instance)
    assert remove_expired(sessions, RETENTION, now=utcnow() + LATER).instances == 1
    old = ORPHAN_AGE + timedelta(hours=1)
    late = _aged(conflict_path(source, "cd" * 32), b"stored during the removal", old)
    live = _instance(sessions, settings, InstanceState.DONE)
    [live_source] = _files(sessions, live)
    kept = _aged(conflict_path(live_source, "cd" * 32), b"a live instance's copy", old)
    assert remove_orphans(sessions, settings.incoming_path) == 1
    assert not late.exists() and kept.exists() and live_source.exists()


def test_a_linked_folder_in_incoming_is_not_followed(
    sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    foreign = _aged(elsewhere / "1.2.3.9.dcm", b"not ours", ORPHAN_AGE + timedelta(hours=1))
    settings.incoming_path.mkdir(parents=True, exist_ok=True)
    (settings.incoming_path / "zz").symlink_to(elsewhere, target_is_directory=True)
    assert remove_orphans(sessions, settings.incoming_path) == 0
    assert foreign.read_bytes() == b"not ours"


def _unremovable(path: Path) -> None:
    """Put a folder with a file in it at ``path``: unlinking it fails for any user (a stand-in
    for an immutable file, another owner's or a read-only mount's)."""
    path.unlink(missing_ok=True)
    path.mkdir(parents=True)
    (path / "inside").write_bytes(b"x")


def test_a_file_that_cannot_be_removed_stops_neither_run(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    stuck, free = (_instance(sessions, settings, InstanceState.DONE) for _ in range(2))
    [stuck_file] = _files(sessions, stuck)
    _unremovable(stuck_file)
    old = ORPHAN_AGE + timedelta(hours=1)
    stuck_orphan = instance_path(settings.incoming_path, "1.2.3.5", "ab" * 32)
    _unremovable(stuck_orphan)
    os.utime(stuck_orphan, (time.time() - old.total_seconds(),) * 2)
    orphan = _aged(instance_path(settings.incoming_path, "1.2.3.6", "ab" * 32), b"orphan", old)
    assert remove_expired(sessions, RETENTION, now=utcnow() + LATER).instances == 1
    assert _removed(sessions, free) and not _removed(sessions, stuck)
    assert all(not path.exists() for path in _files(sessions, free))
    assert remove_orphans(sessions, settings.incoming_path) == 1
    assert not orphan.exists()
    assert stuck_file.is_dir()


def test_removes_old_produced_files_no_row_names_and_nothing_else(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """What a worker wrote for an outcome it could not record, or for no destination."""
    old = ORPHAN_AGE + timedelta(hours=1)
    sent = _instance(sessions, settings, InstanceState.DONE, (OutboundState.SENT,))
    [_, recorded] = _files(sessions, sent)
    os.utime(recorded, (time.time() - old.total_seconds(),) * 2)
    shadow = _aged(settings.outgoing_path / "summary" / "1.2.3.20.dcm", b"kept", old)
    with sessions() as session:
        instance = session.get(Instance, sent)
        assert instance is not None
        produced = Produced("summary", "1.2.840.10008.5.1.4.1.1.7", "1.2.3.20", shadow)
        record_shadow(session, instance, [produced], {produced.kind: ["PACS@127.0.0.1:4242"]})
        session.commit()
    young = _aged(settings.outgoing_path / "summary" / "1.2.3.21.dcm", b"x", timedelta(0))
    unrecorded = [
        _aged(settings.outgoing_path / "summary" / "1.2.3.22.dcm", b"no destination", old),
        _aged(settings.outgoing_path / "sr" / "1.2.3.23.dcm", b"lease lost", old),
        _aged(settings.outgoing_path / "sr" / ".partial-k2j4", b"torn write", old),
    ]
    assert remove_unrecorded(sessions, settings.outgoing_path) == len(unrecorded)
    assert not any(path.exists() for path in unrecorded)
    assert all(path.exists() for path in [recorded, shadow, young])
    assert remove_unrecorded(sessions, settings.outgoing_path) == 0


def _uid(sessions: sessionmaker[Session], instance_id: int) -> str:
    with sessions() as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        return row.sop_instance_uid


def test_an_orphan_stored_again_while_the_sweep_looks_it_up_is_kept(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ORPHAN_AGE + timedelta(hours=1)
    path = _aged(instance_path(settings.incoming_path, "1.2.3.8", "ab" * 32), b"retried", old)
    lookup = retention._present

    def retried_meanwhile(
        session: Session, column: Mapped[str], uids: Iterable[str], *where: ColumnElement[bool]
    ) -> set[str]:
        known = lookup(session, column, uids, *where)
        write_atomically(path, b"retried")  # the sender's retry, acknowledged with its row
        return known

    monkeypatch.setattr(retention, "_present", retried_meanwhile)
    assert remove_orphans(sessions, settings.incoming_path) == 0
    assert path.read_bytes() == b"retried"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_produced_file_written_again_while_the_sweep_looks_it_up_is_kept(
    sessions: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ORPHAN_AGE + timedelta(hours=1)
    path = _aged(settings.outgoing_path / "sr" / "1.2.3.24.dcm", b"first attempt", old)
    lookup = retention._present

    def retried_meanwhile(
        session: Session, column: Mapped[str], uids: Iterable[str], *where: ColumnElement[bool]
    ) -> set[str]:
        named = lookup(session, column, uids, *where)
        write_atomically(path, b"second attempt")  # the worker's retry: same derived UID
        return named

    monkeypatch.setattr(retention, "_present", retried_meanwhile)
    assert remove_unrecorded(sessions, settings.outgoing_path) == 0
    assert path.read_bytes() == b"second attempt"
