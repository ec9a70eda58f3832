"""The worker-side hook (``daemon.results``) and undetermined SRs: outbound objects
commit with the outcome they belong to, or not at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.daemon.results import Reporting
from osteoflag.db import queue
from osteoflag.db.models import Instance, InstanceState, Outbound, utcnow
from osteoflag.destination_settings import Destination
from osteoflag.errors import OsteoflagError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.pixels import display_from_dataset
from osteoflag.pacs.derived import ModelIdentity
from osteoflag.pacs.sr_read import read_result
from tests.conftest import make_settings
from tests.sr_fixtures import make_dx

OWNER = "test-worker"


@pytest.fixture
def settings(tmp_path: Path, tiny_bundle: Path) -> Settings:
    base = make_settings(
        tmp_path, model={"bundle": str(tiny_bundle)}, report={"undetermined_sr": True}
    )
    pacs = Destination(ae_title="PACS", host="127.0.0.1", port=4242)
    return base.model_copy(update={"destinations": (pacs,)})


def _model(settings: Settings) -> ModelIdentity:
    return ModelIdentity.from_bundle(load_bundle(settings.model.bundle))


def _claimed(sessions: sessionmaker[Session], settings: Settings) -> Instance:
    source = make_dx()
    path = settings.incoming_path / f"{source.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    source.save_as(path, enforce_file_format=True)
    queue.enqueue(
        sessions,
        queue.Received(
            sop_instance_uid=source.SOPInstanceUID,
            sop_class_uid=source.SOPClassUID,
            transfer_syntax_uid=str(source.file_meta.TransferSyntaxUID),
            calling_ae="MODALITY",
            peer_address="127.0.0.1:1",
            file_path=str(path),
        ),
    )
    (instance,) = queue.claim_instances(sessions, OWNER, 1, timedelta(minutes=5))
    return instance


def _reporting(settings: Settings) -> Reporting:
    return Reporting(settings, _model(settings))


def test_done_result_commits_with_its_outbound_rows(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    model = _model(settings)
    instance = _claimed(sessions, settings)
    made_at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    result = queue.Result(0.8, "fracture", model.threshold, model.tag, 12.0, made_at=made_at)
    source = pydicom.dcmread(instance.file_path)
    record = _reporting(settings).done(
        instance, source, display_from_dataset(source).grey8(), result
    )
    with sessions() as session:
        assert session.scalars(select(Outbound)).all() == []  # written, not yet queued
        assert queue.complete(session, instance.id, OWNER, result)
        record(session)
        session.commit()
    with sessions() as session:
        rows = session.scalars(select(Outbound)).all()
        assert sorted(row.kind for row in rows) == ["sr", "summary"]
        sr_row = next(row for row in rows if row.kind == "sr")
        assert session.get(Instance, instance.id).finished_at == made_at  # type: ignore[union-attr]
    sr = pydicom.dcmread(sr_row.file_path)
    assert (sr.ContentDate, sr.ContentTime[:6]) == ("20260304", "050607")
    reported = read_result(sr)
    assert (reported.model_version, reported.threshold) == (model.version, model.threshold)
    assert reported.probability == pytest.approx(0.8)
    assert reported.source_sop_instance_uid == instance.sop_instance_uid


def test_a_requeued_result_is_dated_afresh(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A failure's ``finished_at`` is cleared by the requeue and never dates the later SR."""
    instance = _claimed(sessions, settings)
    failed_at = datetime(2020, 1, 1, tzinfo=UTC)
    with sessions() as session:
        assert queue.refuse(
            session, instance.id, OWNER, InstanceState.FAILED, "decoder exploded", failed_at
        )
        session.commit()
    assert queue.requeue_failed(sessions) == 1
    with sessions() as session:
        assert session.get(Instance, instance.id).finished_at is None  # type: ignore[union-attr]
    (again,) = queue.claim_instances(sessions, OWNER, 1, timedelta(minutes=5))
    model = _model(settings)
    result = queue.Result(0.8, "fracture", model.threshold, model.tag, 12.0)
    source = pydicom.dcmread(again.file_path)
    record = _reporting(settings).done(again, source, display_from_dataset(source).grey8(), result)
    with sessions() as session:
        assert queue.complete(session, again.id, OWNER, result)
        record(session)
        session.commit()
    with sessions() as session:
        sr_row = session.scalars(select(Outbound).where(Outbound.kind == "sr")).one()
    sr = pydicom.dcmread(sr_row.file_path)
    assert sr.ContentDate == sr.SeriesDate == result.made_at.strftime("%Y%m%d")


def test_a_hook_that_cannot_build_the_sr_names_the_missing_uid(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    model = _model(settings)
    instance = _claimed(sessions, settings)
    source = pydicom.dcmread(instance.file_path)
    grey = display_from_dataset(source).grey8()
    del source.StudyInstanceUID  # no study to attach the SR to
    result = queue.Result(0.8, "fracture", model.threshold, model.tag, 12.0)
    with pytest.raises(OsteoflagError, match=r"StudyInstanceUID|Study Instance UID"):
        _reporting(settings).done(instance, source, grey, result)


def _refused_rows(
    settings: Settings, sessions: sessionmaker[Session], source_edit: str | None = None
) -> list[Outbound]:
    instance = _claimed(sessions, settings)
    source = pydicom.dcmread(instance.file_path)
    if source_edit is not None:
        delattr(source, source_edit)
    reason = "body part not in allowlist"
    made_at = utcnow()
    record = _reporting(settings).refused(instance, source, reason, made_at)
    with sessions() as session:
        assert queue.refuse(session, instance.id, OWNER, InstanceState.SKIPPED, reason, made_at)
        record(session)
        session.commit()
    with sessions() as session:
        return list(session.scalars(select(Outbound)))


def test_skipped_instance_gets_an_undetermined_sr_when_configured(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    rows = _refused_rows(settings, sessions)
    assert sorted(row.kind for row in rows) == ["sr", "summary"]
    sr_row = next(row for row in rows if row.kind == "sr")
    reported = read_result(pydicom.dcmread(sr_row.file_path))
    assert reported.label.value == "undetermined"
    assert reported.reason == "body part not in allowlist"
    assert reported.probability is None


def test_no_undetermined_sr_unless_configured(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    off = settings.model_copy(
        update={"report": settings.report.model_copy(update={"undetermined_sr": False})}
    )
    assert _refused_rows(off, sessions) == []


def test_undetermined_source_without_study_uid_gives_no_sr_and_no_error(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    assert _refused_rows(settings, sessions, "StudyInstanceUID") == []
