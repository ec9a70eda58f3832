"""Inference worker against a real SQLite queue in tmp_path and a real tiny bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from pydicom.dataset import Dataset
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Event, Instance, InstanceState
from osteoflag.errors import DeliveryError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.pixels import GreyArray, display_from_dataset
from osteoflag.inference.predictor import Predictor
from osteoflag.inference.worker import InferenceWorker, Record
from tests.conftest import make_settings
from tests.helpers.inference_data import dataset, radiograph, save
from tests.helpers.tiny_bundle import build_bundle
from tests.helpers.wait import wait_for


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    folder = build_bundle(tmp_path_factory.mktemp("bundle") / "tiny")
    return Predictor(load_bundle(folder), threads=1, batch_size=4)


def _enqueue(sessions: sessionmaker[Session], path: Path, uid: str) -> None:
    received = queue.Received(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae="TEST",
        peer_address="127.0.0.1",
        file_path=str(path),
    )
    assert queue.enqueue(sessions, received)


def _states(sessions: sessionmaker[Session]) -> dict[str, tuple[InstanceState, str | None]]:
    with sessions() as session:
        rows = session.scalars(select(Instance)).all()
        return {row.sop_instance_uid: (row.state, row.error) for row in rows}


def _good(tmp_path: Path, name: str, **attributes: object) -> Path:
    return save(dataset(radiograph(), bits_stored=12, **attributes), tmp_path / f"{name}.dcm")


def test_broken_pixels_fail_and_the_next_is_classified(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    broken = dataset(radiograph(), bits_stored=12)
    broken.PixelData = broken.PixelData[:1000]
    _enqueue(sessions, save(broken, tmp_path / "broken.dcm"), "1.2.3.1")
    _enqueue(sessions, _good(tmp_path, "good"), "1.2.3.2")
    worker = InferenceWorker(settings, sessions, predictor=predictor)
    assert worker.drain() == 2
    states = _states(sessions)
    assert states["1.2.3.1"][0] is InstanceState.FAILED
    assert "(7FE0,0010)" in (states["1.2.3.1"][1] or "")
    assert states["1.2.3.2"][0] is InstanceState.DONE
    with sessions() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == "1.2.3.2")).one()
        assert row.probability is not None and 0.0 <= row.probability <= 1.0
        assert row.label in ("fracture", "no_fracture")
        assert row.model == "tiny-test@0.0.1" and row.threshold == 0.5
        assert row.inference_ms is not None and row.inference_ms > 0


def test_out_of_domain_instances_are_skipped(tmp_path: Path, predictor: Predictor) -> None:
    settings = make_settings(tmp_path, model={"body_parts": ["hand", "wrist"], "min_rows": 64})
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    _enqueue(sessions, _good(tmp_path, "chest", BodyPartExamined="CHEST"), "1.2.4.1")
    small = save(dataset(np.full((32, 32), 100), bits_stored=12), tmp_path / "small.dcm")
    _enqueue(sessions, small, "1.2.4.2")
    _enqueue(sessions, _good(tmp_path, "wrist", BodyPartExamined="WRIST"), "1.2.4.3")
    _enqueue(sessions, tmp_path / "missing.dcm", "1.2.4.4")
    InferenceWorker(settings, sessions, predictor=predictor).drain()
    states = _states(sessions)
    assert states["1.2.4.1"][0] is InstanceState.SKIPPED
    assert "'CHEST'" in (states["1.2.4.1"][1] or "")
    assert states["1.2.4.2"][0] is InstanceState.SKIPPED
    assert "32x32" in (states["1.2.4.2"][1] or "")
    assert states["1.2.4.3"][0] is InstanceState.DONE
    assert states["1.2.4.4"][0] is InstanceState.FAILED
    engine.dispose()


def test_wake_signal_processes_new_instances_and_on_done_records_in_the_transaction(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    seen: list[str] = []

    def on_done(
        instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record:
        assert source.SOPInstanceUID and result.model == "tiny-test@0.0.1"
        # the hook gets the image the model saw, in 8 bits, not a second decode's
        assert np.array_equal(grey, display_from_dataset(source).grey8())

        def record(session: Session) -> None:
            session.add(Event(instance_id=instance.id, action="recorded"))
            seen.append(instance.sop_instance_uid)

        return record

    worker = InferenceWorker(settings, sessions, predictor=predictor, on_done=on_done)
    scheduler = BackgroundScheduler(timezone="UTC")
    worker.schedule(scheduler)
    assert scheduler.get_job("inference-sweep") is not None
    worker.start()
    try:
        for index in range(6):
            _enqueue(sessions, _good(tmp_path, f"n{index}"), f"1.2.5.{index}")
            worker.wake()
        wait_for(lambda: len(seen) == 6, timeout=20)
    finally:
        worker.stop(timeout=10)
    states = _states(sessions)
    assert all(state is InstanceState.DONE for state, _ in states.values())
    with sessions() as session:
        recorded = session.scalars(select(Event).where(Event.action == "recorded")).all()
    assert len(recorded) == 6


def test_on_done_builds_while_no_database_lock_is_held(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    """SQLite has one writer: a listener's INSERT must not wait while the SR is being built."""
    during: list[str] = []

    def on_done(
        instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record:
        with sessions() as other:  # as the Storage SCP would, with a 0.1 s patience
            other.execute(text("PRAGMA busy_timeout=100"))
            other.add(Event(action="stored-meanwhile"))
            other.commit()
        during.append(instance.sop_instance_uid)
        return lambda session: None

    _enqueue(sessions, _good(tmp_path, "a"), "1.2.8.1")
    _enqueue(sessions, _good(tmp_path, "b"), "1.2.8.2")
    assert InferenceWorker(settings, sessions, predictor=predictor, on_done=on_done).drain() == 2
    assert during == ["1.2.8.1", "1.2.8.2"]
    assert all(state is InstanceState.DONE for state, _ in _states(sessions).values())
    with sessions() as session:
        meanwhile = session.scalars(select(Event).where(Event.action == "stored-meanwhile")).all()
    assert len(meanwhile) == 2


def test_on_done_failure_fails_that_instance_only(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    def on_done(
        instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record:
        if instance.sop_instance_uid.endswith(".1"):
            raise DeliveryError("cannot build the SR")
        return lambda session: None

    _enqueue(sessions, _good(tmp_path, "a"), "1.2.6.1")
    _enqueue(sessions, _good(tmp_path, "b"), "1.2.6.2")
    InferenceWorker(settings, sessions, predictor=predictor, on_done=on_done).drain()
    states = _states(sessions)
    assert states["1.2.6.1"] == (InstanceState.FAILED, "result not recorded: cannot build the SR")
    assert states["1.2.6.2"][0] is InstanceState.DONE


def test_a_record_that_fails_rolls_back_done_and_what_it_added(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    def on_done(
        instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record:
        def record(session: Session) -> None:
            session.add(Event(instance_id=instance.id, action="half-recorded"))
            session.flush()  # in the transaction, beside the 'done' update
            raise DeliveryError("destination row refused")

        return record

    _enqueue(sessions, _good(tmp_path, "a"), "1.2.9.1")
    InferenceWorker(settings, sessions, predictor=predictor, on_done=on_done).drain()
    assert _states(sessions)["1.2.9.1"] == (
        InstanceState.FAILED,
        "result not recorded: destination row refused",
    )
    with sessions() as session:
        half = session.scalars(select(Event).where(Event.action == "half-recorded")).all()
        row = session.scalars(select(Instance)).one()
    assert half == []
    assert row.probability is None  # the 'done' fields went with the rollback


def test_on_refused_runs_for_readable_skips_and_failures(
    tmp_path: Path, sessions: sessionmaker[Session], predictor: Predictor
) -> None:
    settings = make_settings(tmp_path, model={"body_parts": ["HAND"]})
    refused: dict[str, str] = {}

    def on_refused(session: Session, instance: Instance, source: Dataset, reason: str) -> None:
        if instance.sop_instance_uid == "1.2.7.3":
            raise DeliveryError("disk full")
        refused[instance.sop_instance_uid] = reason

    broken = dataset(radiograph(), bits_stored=12)
    broken.PixelData = broken.PixelData[:100]
    _enqueue(sessions, _good(tmp_path, "foot", BodyPartExamined="FOOT"), "1.2.7.1")
    _enqueue(sessions, save(broken, tmp_path / "broken.dcm"), "1.2.7.2")
    _enqueue(sessions, _good(tmp_path, "knee", BodyPartExamined="KNEE"), "1.2.7.3")
    _enqueue(sessions, tmp_path / "gone.dcm", "1.2.7.4")
    InferenceWorker(settings, sessions, predictor=predictor, on_refused=on_refused).drain()
    assert set(refused) == {"1.2.7.1", "1.2.7.2"}
    states = _states(sessions)
    assert states["1.2.7.3"][0] is InstanceState.SKIPPED
    assert (states["1.2.7.3"][1] or "").endswith("no report produced: disk full")
    assert states["1.2.7.4"][0] is InstanceState.FAILED
