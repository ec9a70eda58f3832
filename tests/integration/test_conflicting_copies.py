"""A second copy of an accepted SOP Instance UID with another data set is never dropped: it is
kept beside the first, recorded, and counted on the dashboard and in ``/metrics``; the same
copy sent again is acknowledged and queued once, as before."""

from __future__ import annotations

import threading
from copy import deepcopy
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db import queue
from osteoflag.db.models import Event, Instance
from osteoflag.db.queue import CONFLICTING_COPY
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.scu import Peer, StoreOutcome, send_c_store
from osteoflag.pacs.storage import conflict_copies
from osteoflag.web.app import create_app
from osteoflag.web.server import WebServer
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.helpers.web import WebClient


def _metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def test_a_different_copy_is_kept_beside_the_first_and_counted(
    tmp_path: Path,
    scp: StorageSCP,
    sessions: sessionmaker[Session],
    settings: Settings,
    tiny_bundle: Path,
) -> None:
    first = radiograph()
    second = deepcopy(first)
    second.PixelData = bytes(255 - value for value in first.PixelData)  # same UIDs, other image
    one = write_in_syntax(first, ExplicitVRLittleEndian, tmp_path / "first.dcm")
    other = write_in_syntax(second, ExplicitVRLittleEndian, tmp_path / "second.dcm")

    outcomes = send_c_store(
        [one, one, other, other], Peer("127.0.0.1", scp.port, "OSTEOFLAG"), "PACS"
    )
    assert [outcome.status for outcome in outcomes] == [0, 0, 0, 0]

    with sessions() as session:
        [row] = session.scalars(select(Instance)).all()
        events = session.scalars(select(Event).where(Event.action == CONFLICTING_COPY)).all()
    stored = Path(row.file_path)
    [copy] = conflict_copies(stored)
    assert [event.detail for event in events] == [str(copy)]  # once, though sent twice
    assert dcmread(stored).PixelData == first.PixelData  # the first copy stays the instance
    assert dcmread(copy).PixelData == second.PixelData

    app = create_app(
        settings,
        sessions,
        Predictor(load_bundle(tiny_bundle), threads=1, batch_size=1),
        liveness=dict,
        wake_worker=lambda: None,
    )
    server = WebServer(app, settings.web)
    server.start()
    try:
        client = WebClient(f"http://127.0.0.1:{server.port}")
        assert _metric(client.get("/metrics").text, "osteoflag_conflicting_copies_total") == 1
        assert 'id="conflicting-copies" class="bad">1<' in client.get("/").text
    finally:
        server.stop()


def test_two_copies_stored_at_the_same_moment_are_both_kept(
    tmp_path: Path,
    scp: StorageSCP,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = radiograph()
    second = deepcopy(first)
    second.PixelData = bytes(255 - value for value in first.PixelData)
    paths = [
        write_in_syntax(first, ExplicitVRLittleEndian, tmp_path / "first.dcm"),
        write_in_syntax(second, ExplicitVRLittleEndian, tmp_path / "second.dcm"),
    ]
    # Both associations look the UID up before either has written or inserted anything:
    # the window a busy listener leaves between its check and its committed row.
    both_checked = threading.Barrier(2)
    lookup = queue.accepted_file

    def racing_lookup(factory: sessionmaker[Session], uid: str) -> tuple[int, str] | None:
        found = lookup(factory, uid)
        if found is None:
            both_checked.wait(timeout=30)
        return found

    monkeypatch.setattr(queue, "accepted_file", racing_lookup)
    outcomes: list[StoreOutcome] = []
    senders = [
        threading.Thread(
            target=lambda path=path: outcomes.extend(
                send_c_store([path], Peer("127.0.0.1", scp.port, "OSTEOFLAG"), "PACS")
            )
        )
        for path in paths
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)

    assert sorted(outcome.status for outcome in outcomes) == [0, 0]
    with sessions() as session:
        [row] = session.scalars(select(Instance)).all()
        events = session.scalars(select(Event).where(Event.action == CONFLICTING_COPY)).all()
    stored = Path(row.file_path)
    [copy] = conflict_copies(stored)
    assert [event.detail for event in events] == [str(copy)]
    kept = {dcmread(stored).PixelData, dcmread(copy).PixelData}
    assert kept == {first.PixelData, second.PixelData}
    assert sorted(p.name for p in stored.parent.iterdir()) == sorted([stored.name, copy.name])
