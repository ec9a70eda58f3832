"""Producing outbound objects and delivering them to real Storage SCPs on loopback.

Destinations are a pynetdicom SCP (to script its answers) and DCMTK ``storescp``;
nothing is mocked. Time is moved by passing ``now`` to ``send_pending``, never slept.
"""

from __future__ import annotations

import logging
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.db.models import Instance, Outbound, utcnow
from osteoflag.db.outbound import requeue_failed as requeue_failed_outbound
from osteoflag.inference.labels import Label
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import send_pending
from testkit.net import free_port, port_open
from testkit.wait import wait_for
from tests.helpers.rows import produce, produce_for, queue_in
from tests.helpers.ul import GarblingPeer, a_abort
from tests.sr_fixtures import RecordingSCP, make_dx, require_tool

MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
FRACTURE = Classification(Label.FRACTURE, 0.91)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _settings(tmp_path: Path, ports: list[int], **sender: object) -> Settings:
    return parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "database_url": "sqlite:///var/db.sqlite"},
            "sender": {"timeout_seconds": 2.0, "backoff_base_seconds": 30.0, **sender},
            "destinations": [
                {"ae_title": f"PACS{i}", "host": "127.0.0.1", "port": port}
                for i, port in enumerate(ports)
            ],
        },
        tmp_path,
    )


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """The queue database the ``_settings`` of a test point at (overrides conftest's)."""
    with queue_in(tmp_path / "var") as factory:
        yield factory


def _produce(
    sessions: sessionmaker[Session], settings: Settings, result: Classification = FRACTURE
) -> tuple[pydicom.Dataset, list[Outbound]]:
    source = make_dx()
    with sessions() as session:
        rows = produce_for(session, source, result, MODEL, settings)
        session.commit()
    return source, rows


def _states(sessions: sessionmaker[Session]) -> list[tuple[str, str, int]]:
    with sessions() as session:
        rows = session.scalars(select(Outbound).order_by(Outbound.id)).all()
        return [(row.destination, row.state.value, row.attempts) for row in rows]


@pytest.fixture
def pacs() -> Iterator[RecordingSCP]:
    server = RecordingSCP()
    yield server
    server.stop()


def test_produce_writes_private_files_and_rows_per_destination(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    settings = _settings(tmp_path, [free_port(), free_port()])
    _, rows = _produce(sessions, settings)

    assert sorted(row.kind for row in rows) == ["sr", "sr", "summary", "summary"]
    for row in rows:
        path = Path(row.file_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert pydicom.dcmread(path).SOPInstanceUID == row.sop_instance_uid
    assert not list(settings.outgoing_path.rglob(".partial-*"))


def test_produce_is_idempotent_and_respects_report_settings(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    settings = _settings(tmp_path, [free_port()])
    source, first = _produce(sessions, settings)
    with sessions() as session:
        instance = session.scalars(select(Instance)).one()
        again = produce(session, instance, source, FRACTURE, MODEL, settings)
        undetermined = Classification(Label.UNDETERMINED, reason="image too small")
        skipped = produce(session, instance, source, undetermined, MODEL, settings)
    assert len(first) == 2 and again == [] and skipped == []

    no_summary = settings.model_copy(
        update={
            "report": settings.report.model_copy(
                update={"summary_image": False, "undetermined_sr": True}
            )
        }
    )
    _, rows = _produce(sessions, no_summary, undetermined)
    assert [row.kind for row in rows] == ["sr"]


def test_sends_each_object_once(
    tmp_path: Path, sessions: sessionmaker[Session], pacs: RecordingSCP
) -> None:
    settings = _settings(tmp_path, [pacs.port])
    _, rows = _produce(sessions, settings)

    report = send_pending(sessions, settings)
    assert report.sent == 2
    assert sorted(pacs.received) == sorted(row.sop_instance_uid for row in rows)
    assert send_pending(sessions, settings, now=utcnow() + timedelta(days=1)).sent == 0
    assert len(pacs.received) == 2
    assert {state for _, state, _ in _states(sessions)} == {"sent"}


def test_destination_down_stays_pending_then_goes_out_once(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    port = free_port()
    settings = _settings(tmp_path, [port])
    _, rows = _produce(sessions, settings)

    report = send_pending(sessions, settings)
    assert (report.sent, report.retried) == (0, 2)
    assert _states(sessions) == [(f"PACS0@127.0.0.1:{port}", "pending", 1)] * 2
    assert send_pending(sessions, settings).retried == 0  # backing off: not due yet

    server = RecordingSCP(port=port, ae_title="PACS0")
    try:
        later = utcnow() + timedelta(seconds=31)
        assert send_pending(sessions, settings, now=later).sent == 2
        assert send_pending(sessions, settings, now=later + timedelta(hours=1)).sent == 0
        assert sorted(server.received) == sorted(row.sop_instance_uid for row in rows)
    finally:
        server.stop()
    assert [state for _, state, _ in _states(sessions)] == ["sent", "sent"]


def test_dead_destination_does_not_block_a_live_one(
    tmp_path: Path, sessions: sessionmaker[Session], pacs: RecordingSCP
) -> None:
    with socket.socket() as silent:  # accepts TCP, never answers A-ASSOCIATE
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings = _settings(tmp_path, [silent.getsockname()[1], pacs.port], timeout_seconds=1.0)
        _produce(sessions, settings)
        started = time.monotonic()
        report = send_pending(sessions, settings)
        elapsed = time.monotonic() - started
    assert (report.sent, report.retried) == (2, 2)
    assert len(pacs.received) == 2
    assert elapsed < 5.0


# The association's timeouts are ten times the test's own: only our abort ends the run in time.
@pytest.mark.timeout(60)
def test_a_garbled_response_fails_that_object_and_leaves_the_rest_for_the_next_run(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    peer = GarblingPeer(ExplicitVRLittleEndian)
    settings = _settings(tmp_path, [peer.port], timeout_seconds=600.0)
    settings = settings.model_copy(
        update={"report": settings.report.model_copy(update={"summary_image": False})}
    )
    _produce(sessions, settings)
    _produce(sessions, settings)

    report = send_pending(sessions, settings)
    # The first object is retried later; the second was never sent on the aborted association
    # and is due again at once, its attempts untouched.
    assert (report.sent, report.retried) == (0, 1)
    assert _states(sessions) == [(f"PACS0@127.0.0.1:{peer.port}", "pending", n) for n in (1, 0)]
    with sessions() as session:
        rows = session.scalars(select(Outbound).order_by(Outbound.id)).all()
        assert "no C-STORE response" in (rows[0].last_error or "")
        assert rows[1].lease_owner is None and rows[1].next_attempt_at <= utcnow()
    peer.thread.join(timeout=30)
    assert peer.after_reply.endswith(a_abort(2, 0))


def test_permanent_refusal_fails_at_once(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    server = RecordingSCP(status=0xA900)
    try:
        settings = _settings(tmp_path, [server.port])
        _produce(sessions, settings)
        report = send_pending(sessions, settings)
    finally:
        server.stop()
    assert report.failed == 2
    with sessions() as session:
        errors = session.scalars(select(Outbound.last_error)).all()
    assert all(error and "0xA900" in error for error in errors)


def test_a_destination_host_that_does_not_resolve_makes_its_objects_wait_saying_so(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """A DNS outage (here ``.invalid``, which never resolves): the run raised pynetdicom's
    resolver error, leaving the objects claimed with no reason and no attempt counted."""
    settings = parse_settings(
        {
            "storage": {"path": str(tmp_path / "var"), "database_url": "sqlite:///var/db.sqlite"},
            "destinations": [{"ae_title": "PACS", "host": "pacs.invalid", "port": 104}],
        },
        tmp_path,
    )
    _produce(sessions, settings)
    report = send_pending(sessions, settings)
    assert (report.sent, report.retried, report.failed) == (0, 2, 0)
    with sessions() as session:
        rows = session.scalars(select(Outbound)).all()
    for row in rows:
        assert (row.state.value, row.attempts, row.lease_owner) == ("pending", 1, None)
        assert row.last_error and "'pacs.invalid' cannot be resolved" in row.last_error


def test_a_peer_accepting_none_of_our_sop_classes_fails_them_at_once_saying_why(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    ae = AE(ae_title="PACS")
    ae.add_supported_context("1.2.840.10008.1.1")  # Verification only: no storage at all
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        settings = _settings(tmp_path, [int(server.server_address[1])])
        _produce(sessions, settings)
        report = send_pending(sessions, settings)
    finally:
        server.shutdown()
    assert (report.sent, report.retried, report.failed) == (0, 0, 2)
    with sessions() as session:
        errors = session.scalars(select(Outbound.last_error)).all()
    for error in errors:
        assert error and "accepted the association but no presentation context" in error
        assert "Comprehensive 3D SR Storage: Abstract Syntax Not Supported" in error


def test_out_of_resources_is_retried(
    tmp_path: Path, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    server = RecordingSCP(status=0xA700)
    try:
        settings = _settings(tmp_path, [server.port])
        _produce(sessions, settings)
        with caplog.at_level(logging.WARNING, logger="osteoflag.pacs.sender"):
            assert send_pending(sessions, settings).retried == 2
        logged = [r for r in caplog.records if r.getMessage().startswith("delivery attempt failed")]
        with sessions() as session:
            uids = set(session.scalars(select(Outbound.sop_instance_uid)).all())
        assert {record.sop_instance_uid for record in logged} == uids  # type: ignore[attr-defined]
        assert all("0xA700" in record.error for record in logged)  # type: ignore[attr-defined]
        server.status = 0x0000
        assert send_pending(sessions, settings, now=utcnow() + timedelta(minutes=1)).sent == 2
    finally:
        server.stop()


def test_past_the_deadline_is_failed_and_requeue_brings_it_back(
    tmp_path: Path, sessions: sessionmaker[Session], pacs: RecordingSCP
) -> None:
    settings = _settings(
        tmp_path,
        [free_port()],
        backoff_base_seconds=0.1,
        backoff_cap_seconds=0.1,
        deadline_seconds=0.1,
    )
    _produce(sessions, settings)
    with sessions() as session:
        for row in session.scalars(select(Outbound)):
            row.created_at = utcnow() - timedelta(seconds=1)
        session.commit()
    assert send_pending(sessions, settings).failed == 2
    assert {state for _, state, _ in _states(sessions)} == {"failed"}

    assert requeue_failed_outbound(sessions) == 2
    live = settings.model_copy(
        update={"destinations": (settings.destinations[0].model_copy(update={"port": pacs.port}),)}
    )
    with sessions() as session:  # the row's destination key follows the config
        for row in session.scalars(select(Outbound)):
            row.destination = f"PACS0@127.0.0.1:{pacs.port}"
        session.commit()
    assert send_pending(sessions, live).sent == 2


@pytest.mark.parametrize("accept_jpeg", [False, True], ids=["uncompressed-only", "accepts-jpeg"])
def test_delivers_to_dcmtk_storescp(
    tmp_path: Path, sessions: sessionmaker[Session], accept_jpeg: bool
) -> None:
    """storescp accepts only uncompressed syntaxes unless told ``+xa``: the JPEG summary
    reaches it either way, decompressed when it must be, with the same SOP Instance UID."""
    tool = require_tool("storescp")
    port = free_port()
    received = tmp_path / "storescp"
    received.mkdir()
    options = ["+xa"] if accept_jpeg else []
    process = subprocess.Popen(
        [tool, *options, "--aetitle", "PACS0", "--output-directory", str(received), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), timeout=10.0)
        settings = _settings(tmp_path, [port])
        _, rows = _produce(sessions, settings)
        assert send_pending(sessions, settings).sent == 2
    finally:
        process.terminate()
        process.wait(timeout=10)
    stored = {str(pydicom.dcmread(path).SOPInstanceUID): path for path in received.iterdir()}
    assert set(stored) == {row.sop_instance_uid for row in rows}
    [summary_row] = [row for row in rows if row.sop_class_uid == SECONDARY_CAPTURE]
    summary = pydicom.dcmread(stored[summary_row.sop_instance_uid])
    expected = JPEGBaseline8Bit if accept_jpeg else ExplicitVRLittleEndian
    assert summary.file_meta.TransferSyntaxUID == expected
    assert summary.LossyImageCompression == "01"
    assert summary.PhotometricInterpretation == ("YBR_FULL_422" if accept_jpeg else "RGB")
    assert summary.pixel_array.shape[2] == 3
    original = pydicom.dcmread(summary_row.file_path)
    assert original.file_meta.TransferSyntaxUID == JPEGBaseline8Bit  # our copy is unchanged


def test_objects_for_a_removed_destination_are_failed(
    tmp_path: Path, sessions: sessionmaker[Session], pacs: RecordingSCP
) -> None:
    settings = _settings(tmp_path, [free_port(), pacs.port])
    _produce(sessions, settings)
    only_live = settings.model_copy(update={"destinations": settings.destinations[1:]})
    report = send_pending(sessions, only_live)
    assert (report.sent, report.failed) == (2, 2)
    with sessions() as session:
        errors = session.scalars(
            select(Outbound.last_error).where(Outbound.destination.startswith("PACS0@"))
        ).all()
    assert errors == ["destination no longer configured"] * 2


def test_missing_file_fails_that_object_only(
    tmp_path: Path, sessions: sessionmaker[Session], pacs: RecordingSCP
) -> None:
    settings = _settings(tmp_path, [pacs.port])
    _, rows = _produce(sessions, settings)
    summary = next(row for row in rows if row.kind == "summary")
    Path(summary.file_path).unlink()
    report = send_pending(sessions, settings)
    assert (report.sent, report.failed) == (1, 1)
    with sessions() as session:
        failed = session.scalars(select(Outbound).where(Outbound.kind == "summary")).one()
    assert failed.last_error is not None and "cannot read" in failed.last_error


def test_concurrent_sender_runs_never_send_an_object_twice(
    tmp_path: Path, sessions: sessionmaker[Session], pacs: RecordingSCP
) -> None:
    settings = _settings(tmp_path, [pacs.port])
    for _ in range(5):
        _produce(sessions, settings)
    with ThreadPoolExecutor(max_workers=3) as pool:
        reports = list(pool.map(lambda _: send_pending(sessions, settings), range(3)))
    assert sum(report.sent for report in reports) == 10
    assert len(pacs.received) == 10
    assert len(set(pacs.received)) == 10
