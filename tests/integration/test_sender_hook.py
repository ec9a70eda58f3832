"""The worker-side hook: outbound objects commit with the result, or not at all."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Destination, Settings
from osteoflag.db import queue
from osteoflag.db.models import Instance, InstanceState, Outbound
from osteoflag.errors import PermanentError
from osteoflag.pacs.outbound import OutboundHook
from osteoflag.pacs.sr import read_result
from tests.conftest import make_settings
from tests.helpers.tiny_bundle import build_bundle
from tests.sr_fixtures import make_dx

OWNER = "test-worker"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    bundle = build_bundle(tmp_path / "bundle", version="2.0.0", threshold=0.5)
    base = make_settings(tmp_path, model={"bundle": str(bundle)}, report={"undetermined_sr": True})
    pacs = Destination(ae_title="PACS", host="127.0.0.1", port=4242)
    return base.model_copy(update={"destinations": (pacs,)})


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


def test_done_result_commits_with_its_outbound_rows(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    hook = OutboundHook.from_settings(settings)
    instance = _claimed(sessions, settings)
    result = queue.Result(0.8, "fracture", 0.5, hook.model.tag, 12.0)
    with sessions() as session:
        assert queue.complete(session, instance.id, OWNER, result)
        hook(session, instance, result)
        session.commit()
    with sessions() as session:
        rows = session.scalars(select(Outbound)).all()
        assert sorted(row.kind for row in rows) == ["sr", "summary"]
        sr_row = next(row for row in rows if row.kind == "sr")

    reported = read_result(pydicom.dcmread(sr_row.file_path))
    assert (reported.model_version, reported.threshold) == ("2.0.0", 0.5)
    assert reported.source_sop_instance_uid == instance.sop_instance_uid


def test_failing_hook_rolls_the_result_back(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    hook = OutboundHook.from_settings(settings)
    instance = _claimed(sessions, settings)
    result = queue.Result(0.8, "fracture", 0.5, "other-model@9", 12.0)
    with sessions() as session, pytest.raises(PermanentError, match="other-model@9"):
        assert queue.complete(session, instance.id, OWNER, result)
        hook(session, instance, result)
        session.commit()
    with sessions() as session:
        assert session.get(Instance, instance.id).state is InstanceState.PROCESSING  # type: ignore[union-attr]
        assert session.scalars(select(Outbound)).all() == []


def test_skipped_instance_gets_an_undetermined_sr_when_configured(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    hook = OutboundHook.from_settings(settings)
    instance = _claimed(sessions, settings)
    with sessions() as session:
        assert queue.skip(session, instance.id, OWNER, "body part not in allowlist")
        hook.undetermined(session, instance, "body part not in allowlist")
        session.commit()
    with sessions() as session:
        sr_row = session.scalars(select(Outbound).where(Outbound.kind == "sr")).one()

    reported = read_result(pydicom.dcmread(sr_row.file_path))
    assert reported.label.value == "undetermined"
    assert reported.reason == "body part not in allowlist"
