"""Inference worker against a real SQLite queue in tmp_path and a real tiny bundle."""

from __future__ import annotations

import sqlite3
import struct
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from pydicom.dataset import Dataset
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.daemon.finishing import Record, Silent
from osteoflag.daemon.worker import InferenceWorker
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Event, Instance, InstanceState, utcnow
from osteoflag.errors import DeliveryError, PermanentError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.maps import add_maps_to_bundle
from osteoflag.inference.pixels import DisplayImage, GreyArray, display_from_dataset
from osteoflag.inference.predictor import Prediction, Predictor
from osteoflag.training.add_localiser import add_localiser_to_bundle
from testkit.boxes import HALF_BOX, blob_radiograph, boxes_folder
from testkit.inference_data import dataset, radiograph, save
from testkit.tiny_bundle import build_bundle
from testkit.wait import wait_for
from tests.conftest import make_settings


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
    worker = InferenceWorker(settings, sessions, predictor)
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
    InferenceWorker(settings, sessions, predictor).drain()
    states = _states(sessions)
    assert states["1.2.4.1"][0] is InstanceState.SKIPPED
    assert "'CHEST'" in (states["1.2.4.1"][1] or "")
    assert states["1.2.4.2"][0] is InstanceState.SKIPPED
    assert "32x32" in (states["1.2.4.2"][1] or "")
    assert states["1.2.4.3"][0] is InstanceState.DONE
    assert states["1.2.4.4"][0] is InstanceState.FAILED
    engine.dispose()


class Hooks(Silent):
    """Finishing hooks for tests: each test overrides what it needs."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def committed(self) -> None:
        self.calls.append("committed")


def test_produced_objects_are_keyed_on_the_stored_instance(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    """A file whose data set names another instance (queued before the Storage SCP refused
    such data sets) still gets objects that reference the instance it was stored as."""
    sources: list[tuple[str, str]] = []

    class Capture(Hooks):
        def done(
            self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
        ) -> Record | None:
            sources.append((source.SOPInstanceUID, source.SOPClassUID))
            return None

    _enqueue(sessions, _good(tmp_path, "other"), "1.2.3.9")
    InferenceWorker(settings, sessions, predictor, finishing=Capture()).drain()
    assert sources == [("1.2.3.9", "1.2.840.10008.5.1.4.1.1.1.1")]


def test_the_sweep_alone_picks_up_what_no_wake_announced(
    tmp_path: Path, sessions: sessionmaker[Session], predictor: Predictor
) -> None:
    """The daemon's own path: the worker's scheduled sweep, with no wake after the store."""
    settings = make_settings(tmp_path, worker={"sweep_seconds": 0.2})
    worker = InferenceWorker(settings, sessions, predictor)
    scheduler = BackgroundScheduler(timezone="UTC")
    worker.schedule(scheduler)
    _enqueue(sessions, _good(tmp_path, "first"), "1.2.5.9")
    worker.start()  # drains the queue once, then sleeps until woken
    scheduler.start()
    try:
        wait_for(lambda: _states(sessions)["1.2.5.9"][0] is InstanceState.DONE, timeout=20)
        for index in range(3):  # no wake: as if a notification were lost
            _enqueue(sessions, _good(tmp_path, f"s{index}"), f"1.2.5.{index}")
        wait_for(
            lambda: all(state is InstanceState.DONE for state, _ in _states(sessions).values()),
            timeout=30,
        )
    finally:
        scheduler.shutdown(wait=True)
        worker.stop(timeout=10)
    assert len(_states(sessions)) == 4


def test_done_records_in_the_transaction_then_announces_once_committed(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    class Recording(Hooks):
        def done(
            self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
        ) -> Record:
            assert source.SOPInstanceUID and result.model == "tiny-test@0.0.1"
            # the hook gets the image the model saw, in 8 bits, not a second decode's
            assert np.array_equal(grey, display_from_dataset(source).grey8())
            self.calls.append("done")

            def record(session: Session) -> None:
                session.add(Event(instance_id=instance.id, action="recorded"))
                self.calls.append("record")

            return record

    hooks = Recording()
    worker = InferenceWorker(settings, sessions, predictor, hooks)
    worker.start()
    try:
        for index in range(3):
            _enqueue(sessions, _good(tmp_path, f"n{index}"), f"1.2.5.{index}")
            worker.wake()
        wait_for(lambda: hooks.calls.count("committed") == 3, timeout=20)
    finally:
        worker.stop(timeout=10)
    assert hooks.calls == ["done", "record", "committed"] * 3
    states = _states(sessions)
    assert all(state is InstanceState.DONE for state, _ in states.values())
    with sessions() as session:
        recorded = session.scalars(select(Event).where(Event.action == "recorded")).all()
    assert len(recorded) == 3


class Meanwhile(Hooks):
    """Writes as the Storage SCP would, with a 0.1 s patience, while building the objects."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__()
        self._sessions = sessions

    def _store_meanwhile(self, instance: Instance, step: str) -> Record:
        with self._sessions() as other:
            other.execute(text("PRAGMA busy_timeout=100"))
            other.add(Event(action="stored-meanwhile"))
            other.commit()
        self.calls.append(f"{step} {instance.sop_instance_uid}")
        return lambda session: None

    def done(
        self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record:
        return self._store_meanwhile(instance, "done")

    def refused(
        self, instance: Instance, source: Dataset, reason: str, made_at: datetime
    ) -> Record:
        return self._store_meanwhile(instance, "refused")


def test_objects_are_built_while_no_database_lock_is_held(
    tmp_path: Path, sessions: sessionmaker[Session], predictor: Predictor
) -> None:
    """SQLite has one writer: a listener's INSERT must not wait while the SR is being built,
    whether the instance was classified or refused."""
    settings = make_settings(tmp_path, model={"body_parts": ["HAND"]})
    _enqueue(sessions, _good(tmp_path, "a", BodyPartExamined="HAND"), "1.2.8.1")
    _enqueue(sessions, _good(tmp_path, "b", BodyPartExamined="FOOT"), "1.2.8.2")
    hooks = Meanwhile(sessions)
    assert InferenceWorker(settings, sessions, predictor, hooks).drain() == 2
    assert sorted(call for call in hooks.calls if call != "committed") == [
        "done 1.2.8.1",
        "refused 1.2.8.2",
    ]
    states = _states(sessions)
    assert states["1.2.8.1"][0] is InstanceState.DONE
    assert states["1.2.8.2"][0] is InstanceState.SKIPPED
    with sessions() as session:
        meanwhile = session.scalars(select(Event).where(Event.action == "stored-meanwhile")).all()
    assert len(meanwhile) == 2


def test_done_failure_fails_that_instance_only(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    class Failing(Hooks):
        def done(
            self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
        ) -> Record:
            if instance.sop_instance_uid.endswith(".1"):
                raise PermanentError("cannot build the SR")
            return lambda session: None

    _enqueue(sessions, _good(tmp_path, "a"), "1.2.6.1")
    _enqueue(sessions, _good(tmp_path, "b"), "1.2.6.2")
    InferenceWorker(settings, sessions, predictor, Failing()).drain()
    states = _states(sessions)
    assert states["1.2.6.1"] == (InstanceState.FAILED, "result not recorded: cannot build the SR")
    assert states["1.2.6.2"][0] is InstanceState.DONE


def test_a_record_that_fails_rolls_back_done_and_what_it_added(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    class HalfRecording(Hooks):
        def done(
            self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
        ) -> Record:
            def record(session: Session) -> None:
                session.add(Event(instance_id=instance.id, action="half-recorded"))
                session.flush()  # in the transaction, beside the 'done' update
                raise PermanentError("destination row refused")

            return record

    _enqueue(sessions, _good(tmp_path, "a"), "1.2.9.1")
    hooks = HalfRecording()
    InferenceWorker(settings, sessions, predictor, hooks).drain()
    assert _states(sessions)["1.2.9.1"] == (
        InstanceState.FAILED,
        "result not recorded: destination row refused",
    )
    with sessions() as session:
        half = session.scalars(select(Event).where(Event.action == "half-recorded")).all()
        row = session.scalars(select(Instance)).one()
    assert half == []
    assert row.probability is None  # the 'done' fields went with the rollback
    assert hooks.calls == ["committed"]  # for 'failed' only, never for the rolled-back 'done'


def test_refused_runs_for_readable_skips_and_failures(
    tmp_path: Path, sessions: sessionmaker[Session], predictor: Predictor
) -> None:
    settings = make_settings(tmp_path, model={"body_parts": ["HAND"]})

    class Refusing(Hooks):
        def __init__(self) -> None:
            super().__init__()
            self.refused_with: dict[str, str] = {}

        def refused(
            self, instance: Instance, source: Dataset, reason: str, made_at: datetime
        ) -> Record:
            if instance.sop_instance_uid == "1.2.7.3":
                raise DeliveryError("disk full")
            self.refused_with[instance.sop_instance_uid] = reason

            def record(session: Session) -> None:
                if instance.sop_instance_uid == "1.2.7.2":
                    raise DeliveryError("row refused")

            return record

    broken = dataset(radiograph(), bits_stored=12)
    broken.PixelData = broken.PixelData[:100]
    _enqueue(sessions, _good(tmp_path, "foot", BodyPartExamined="FOOT"), "1.2.7.1")
    _enqueue(sessions, save(broken, tmp_path / "broken.dcm"), "1.2.7.2")
    _enqueue(sessions, _good(tmp_path, "knee", BodyPartExamined="KNEE"), "1.2.7.3")
    _enqueue(sessions, tmp_path / "gone.dcm", "1.2.7.4")
    hooks = Refusing()
    InferenceWorker(settings, sessions, predictor, hooks).drain()
    assert set(hooks.refused_with) == {"1.2.7.1", "1.2.7.2"}
    states = _states(sessions)
    assert states["1.2.7.1"][0] is InstanceState.SKIPPED
    assert states["1.2.7.2"][0] is InstanceState.FAILED
    assert (states["1.2.7.2"][1] or "").endswith("no report produced: row refused")
    assert states["1.2.7.3"][0] is InstanceState.SKIPPED
    assert (states["1.2.7.3"][1] or "").endswith("no report produced: disk full")
    assert states["1.2.7.4"][0] is InstanceState.FAILED


def test_a_flagged_result_hands_its_region_to_the_objects(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings
) -> None:
    build_bundle(tmp_path / "plain")
    add_maps_to_bundle(tmp_path / "plain", tmp_path / "maps")
    predictor = Predictor(load_bundle(tmp_path / "maps"), threads=1, batch_size=4)
    results: dict[str, tuple[queue.Result, tuple[int, ...]]] = {}

    class Regions(Hooks):
        def done(
            self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
        ) -> Record | None:
            results[instance.sop_instance_uid] = (result, grey.shape)
            return None

    for seed in range(3):  # seed 0 is flagged by the tiny bundle, 1 and 2 are not
        image = radiograph(rows=96 + 40 * seed, columns=80, seed=seed)
        path = save(dataset(image, bits_stored=12), tmp_path / f"r{seed}.dcm")
        _enqueue(sessions, path, f"1.2.10.{seed}")
    InferenceWorker(settings, sessions, predictor, Regions()).drain()
    labels = {uid: result.label for uid, (result, _) in results.items()}
    assert labels == {"1.2.10.0": "fracture", "1.2.10.1": "no_fracture", "1.2.10.2": "no_fracture"}
    flagged, (rows, columns) = results["1.2.10.0"]
    assert flagged.region is not None
    x0, y0, x1, y1 = flagged.region.box
    assert 0 <= x0 <= flagged.region.peak[0] <= x1 < columns
    assert 0 <= y0 <= flagged.region.peak[1] <= y1 < rows
    assert results["1.2.10.1"][0].region is None and results["1.2.10.2"][0].region is None


def test_a_bundle_with_a_localiser_gives_the_worker_its_region(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The worker hands the localiser the display it kept (8-bit grey), so a flagged DX gets
    the localiser's region, on the blob its boxes taught it."""
    add_maps_to_bundle(build_bundle(tmp_path / "plain", threshold=0.0), tmp_path / "maps")
    boxes_folder(tmp_path / "boxes", 40, seed=1)
    add_localiser_to_bundle(tmp_path / "maps", tmp_path / "boxes", tmp_path / "localised")
    predictor = Predictor(load_bundle(tmp_path / "localised"), threads=1, batch_size=4)
    assert predictor.localiser is not None
    seen: dict[str, tuple[queue.Result, GreyArray]] = {}

    class Regions(Hooks):
        def done(
            self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
        ) -> Record | None:
            seen[instance.sop_instance_uid] = (result, grey)
            return None

    centres = {}
    for seed in range(3):
        image, centres[f"1.2.11.{seed}"] = blob_radiograph(np.random.default_rng(20 + seed))
        pixels = np.rint(image * 4095).astype(np.int64)
        path = save(dataset(pixels, bits_stored=12), tmp_path / f"b{seed}.dcm")
        _enqueue(sessions, path, f"1.2.11.{seed}")
    InferenceWorker(settings, sessions, predictor, Regions()).drain()
    assert set(seen) == set(centres)
    spec = predictor.bundle.input_spec
    for uid, (result, grey) in seen.items():
        display = DisplayImage(grey.astype(np.float32) / np.float32(255.0))
        assert result.region == predictor.localiser.region(display, spec, predictor.maps)
        assert result.region is not None
        cx, cy = centres[uid]
        px, py = result.region.peak
        assert abs(px - cx) <= HALF_BOX and abs(py - cy) <= HALF_BOX


def test_an_unexpected_error_from_refused_is_noted_and_the_batch_finishes(
    tmp_path: Path, sessions: sessionmaker[Session], predictor: Predictor
) -> None:
    """The daemon's hook decodes the source again for an Undetermined SR, and a decoder may
    raise anything (a short VOI LUT gives struct.error): noted in that instance's reason,
    never left to strand its batch-mates in ``processing``."""
    settings = make_settings(tmp_path, model={"body_parts": ["HAND"]})

    class Decoding(Hooks):
        def refused(
            self, instance: Instance, source: Dataset, reason: str, made_at: datetime
        ) -> Record:
            raise struct.error("unpack_from requires a buffer of at least 131072 bytes")

    _enqueue(sessions, _good(tmp_path, "a"), "1.2.12.1")
    _enqueue(sessions, _good(tmp_path, "foot", BodyPartExamined="FOOT"), "1.2.12.2")
    _enqueue(sessions, _good(tmp_path, "c"), "1.2.12.3")
    assert InferenceWorker(settings, sessions, predictor, Decoding()).run_once() == 3
    states = _states(sessions)
    assert states["1.2.12.1"][0] is InstanceState.DONE
    assert states["1.2.12.3"][0] is InstanceState.DONE
    state, reason = states["1.2.12.2"]
    assert state is InstanceState.SKIPPED
    assert (reason or "").endswith(
        "; no report produced: unexpected struct.error: unpack_from requires a buffer of at "
        "least 131072 bytes"
    )


def test_an_unexpected_error_from_done_fails_that_instance_only_without_its_values(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    class Quoting(Hooks):
        def done(
            self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
        ) -> Record | None:
            if instance.sop_instance_uid == "1.2.13.1":
                raise ValueError(f"cannot encode {source.PatientName} in the SR")
            return None

    _enqueue(sessions, _good(tmp_path, "a", PatientName="Doe^Jane"), "1.2.13.1")
    _enqueue(sessions, _good(tmp_path, "b", PatientName="Doe^John"), "1.2.13.2")
    assert InferenceWorker(settings, sessions, predictor, Quoting()).run_once() == 2
    states = _states(sessions)
    assert states["1.2.13.1"] == (
        InstanceState.FAILED,
        "result not recorded: unexpected ValueError: cannot encode <PatientName> in the SR",
    )
    assert states["1.2.13.2"][0] is InstanceState.DONE


def test_a_locked_database_hands_those_instances_back_and_the_batch_finishes(
    tmp_path: Path, predictor: Predictor
) -> None:
    """SQLite answers "database is locked" once another writer holds the lock past the busy
    timeout: the instances it hit (a classified one and a skipped one, whose Undetermined SR
    is not dropped for it) are re-queued, attempt not counted, when the batch ends, and the
    rest of the batch is recorded, instead of all of it waiting out the lease in
    ``processing`` and counting as a crash."""
    settings = make_settings(tmp_path, model={"body_parts": ["HAND"]})
    engine = make_engine(settings.storage.database_url)
    event.listen(
        engine, "connect", lambda connection, _: connection.execute("PRAGMA busy_timeout=200")
    )
    migrate(engine)
    sessions = session_factory(engine)
    holder = sqlite3.connect(tmp_path / "var" / "osteoflag.db", isolation_level=None)

    class Locking(Hooks):
        """Another writer takes the lock, for longer than 200 ms, while the objects of
        1.2.14.0 (refused) and 1.2.14.2 are built, and lets it go at the next one."""

        def _meanwhile(self, instance: Instance) -> None:
            if holder.in_transaction:
                holder.execute("ROLLBACK")
            if instance.sop_instance_uid in ("1.2.14.0", "1.2.14.2"):
                holder.execute("BEGIN IMMEDIATE")

        def done(
            self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
        ) -> Record | None:
            self._meanwhile(instance)
            return None

        def refused(
            self, instance: Instance, source: Dataset, reason: str, made_at: datetime
        ) -> Record:
            self._meanwhile(instance)
            return lambda session: session.add(Event(instance_id=instance.id, action="report"))

    _enqueue(sessions, _good(tmp_path, "foot", BodyPartExamined="FOOT"), "1.2.14.0")
    for index in range(1, 4):
        _enqueue(sessions, _good(tmp_path, f"n{index}"), f"1.2.14.{index}")
    try:
        assert InferenceWorker(settings, sessions, predictor, Locking()).run_once() == 4
    finally:
        holder.close()
    with sessions() as session:
        rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
        reports = session.scalars(select(Event).where(Event.action == "report")).all()
    engine.dispose()
    assert [rows[uid].state for uid in ("1.2.14.1", "1.2.14.3")] == [InstanceState.DONE] * 2
    for uid in ("1.2.14.0", "1.2.14.2"):
        locked = rows[uid]
        assert (locked.state, locked.attempts, locked.lease_owner) == (
            InstanceState.QUEUED,
            0,
            None,
        )
        assert locked.error == "outcome not recorded, will retry"
        assert locked.next_attempt_at > utcnow()
    assert reports == []  # nothing half-recorded


def test_an_error_no_instance_contained_leaves_the_claims_to_their_lease(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    """Handed back, an instance that breaks its batch every time would be retried for ever
    without an attempt counted; left claimed, its lease runs out, the attempt counts and
    ``worker.max_attempts`` ends it."""

    class Broken(Predictor):
        def predict_inputs(self, *args: object, **kwargs: object) -> list[Prediction]:
            return []  # fewer predictions than inputs: nothing maps them to their instances

    broken = Broken(predictor.bundle, threads=1, batch_size=4)
    for index in range(2):
        _enqueue(sessions, _good(tmp_path, f"b{index}"), f"1.2.15.{index}")
    with pytest.raises(ValueError, match="zip"):
        InferenceWorker(settings, sessions, broken).run_once()
    with sessions() as session:
        rows = session.scalars(select(Instance)).all()
        assert {(row.state, row.attempts) for row in rows} == {(InstanceState.PROCESSING, 1)}


def test_a_decoding_reason_never_quotes_a_patient_value(
    tmp_path: Path, sessions: sessionmaker[Session], settings: Settings, predictor: Predictor
) -> None:
    """A sender that put the patient's name where the pixel module expects a term: the
    decoder's reason quotes what it found, and the worker names the attribute instead."""
    mixed_up = _good(tmp_path, "m", PatientName="Doe^Jane", PhotometricInterpretation="Doe^Jane")
    _enqueue(sessions, mixed_up, "1.2.16.1")
    InferenceWorker(settings, sessions, predictor).drain()
    [(state, reason)] = _states(sessions).values()
    assert state is InstanceState.FAILED and reason is not None
    assert "Photometric Interpretation '<PatientName>'" in reason and "Jane" not in reason
