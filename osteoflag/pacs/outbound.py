"""From a stored result to durable outbound objects: files on disk and queue rows.

``produce_outbound`` is what the worker calls, inside the transaction that records the
result: it writes the SR (and the summary image) atomically under the outgoing folder
with owner-only permissions (``storage.write_atomically``), then adds one ``pending``
outbound row per object and destination to the caller's session. Committing that
session makes result and delivery obligation durable together; a crash before the
commit leaves neither (the files are rewritten with the same UIDs on the next attempt).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from osteoflag.config import Destination, Settings
from osteoflag.db import queue
from osteoflag.db.models import Instance, Outbound, OutboundState, utcnow
from osteoflag.errors import PermanentError, PixelDataError, TransientError
from osteoflag.inference.bundle import load_bundle
from osteoflag.pacs.derived import Classification, Kind, Label, ModelIdentity, device_uid
from osteoflag.pacs.sr import build_sr
from osteoflag.pacs.storage import write_atomically
from osteoflag.pacs.summary import build_summary

logger = logging.getLogger(__name__)


class OutboundHook:
    """The inference worker's ``on_done`` (and, for skips and failures, ``undetermined``).

    Called inside the transaction that records the outcome, so the result and the
    obligation to deliver it commit together. The source is re-read from the
    instance's file; an exception rolls the whole transaction back and the instance
    is retried after its lease expires.
    """

    def __init__(self, settings: Settings, model: ModelIdentity) -> None:
        self.settings = settings
        self.model = model

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundHook:
        """A hook for the configured bundle (its manifest identifies the model)."""
        return cls(settings, ModelIdentity.from_bundle(load_bundle(settings.model.bundle)))

    def __call__(self, session: Session, instance: Instance, result: queue.Result) -> None:
        """After ``queue.complete``: produce the SR (+ summary) and their outbound rows."""
        if result.model != self.model.tag:
            raise PermanentError(
                f"result of SOPInstanceUID {instance.sop_instance_uid} is from model "
                f"{result.model}, but the SR would name {self.model.tag}"
            )
        model = replace(self.model, threshold=result.threshold)
        classification = Classification(label=Label(result.label), probability=result.probability)
        produce_outbound(session, instance, _read(instance), classification, model, self.settings)

    def undetermined(self, session: Session, instance: Instance, reason: str) -> None:
        """After ``queue.skip`` / ``queue.fail``: an Undetermined SR if so configured."""
        if not self.settings.report.undetermined_sr:
            return
        try:
            source = _read(instance)
        except PermanentError:
            return  # no readable header: no patient or study to attach an SR to
        result = Classification(label=Label.UNDETERMINED, reason=reason)
        produce_outbound(session, instance, source, result, self.model, self.settings)


def _read(instance: Instance) -> Dataset:
    try:
        return dcmread(instance.file_path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PermanentError(
            f"SOPInstanceUID {instance.sop_instance_uid}: {instance.file_path} unreadable: {exc}"
        ) from exc


def destination_key(destination: Destination) -> str:
    """The outbound row's ``destination``: ``AE@host:port``."""
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def encode(dataset: Dataset) -> bytes:
    """``dataset`` as a DICOM file (PS3.10: preamble, File Meta Information, data set)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_objects(
    source: Dataset,
    result: Classification,
    model: ModelIdentity,
    settings: Settings,
    created: datetime,
) -> list[Dataset]:
    """The SR, then the summary image if configured (and if an undetermined image can show)."""
    objects = [
        build_sr(
            source,
            result,
            model=model,
            device_uid=device_uid(settings.listener.ae_title),
            created=created,
        )
    ]
    if settings.report.summary_image:
        try:
            objects.append(build_summary(source, result, model=model, created=created))
        except PixelDataError:
            if result.label is not Label.UNDETERMINED:
                raise
    return objects


def produce_outbound(
    session: Session,
    instance: Instance,
    source: Dataset,
    result: Classification,
    model: ModelIdentity,
    settings: Settings,
) -> list[Outbound]:
    """Write the objects for ``instance`` and add their ``pending`` rows to ``session``.

    Returns the rows added (none for an undetermined result unless
    ``[report] undetermined_sr`` is on). Rows that already exist for the same SOP
    Instance UID and destination are left as they are, so calling this twice is safe.
    The caller commits.
    """
    if result.label is Label.UNDETERMINED and not settings.report.undetermined_sr:
        return []
    created = instance.finished_at or utcnow()
    rows: list[Outbound] = []
    for dataset in build_objects(source, result, model, settings, created):
        kind = Kind.SR if dataset.Modality == "SR" else Kind.SUMMARY
        sop_uid = str(dataset.SOPInstanceUID)
        path = settings.outgoing_path / kind.value / f"{sop_uid}.dcm"
        try:
            write_atomically(path, encode(dataset))
        except OSError as exc:
            raise TransientError(f"cannot write {kind.value} {sop_uid} to {path}: {exc}") from exc
        rows.extend(_add_rows(session, instance, kind, dataset, path, settings))
    logger.info(
        "outbound objects produced",
        extra={
            "action": "produce_outbound",
            "instance_id": instance.id,
            "sop_instance_uid": instance.sop_instance_uid,
            "objects": len(rows),
        },
    )
    return rows


def _add_rows(
    session: Session,
    instance: Instance,
    kind: Kind,
    dataset: Dataset,
    path: Path,
    settings: Settings,
) -> list[Outbound]:
    sop_uid = str(dataset.SOPInstanceUID)
    known = set(
        session.scalars(select(Outbound.destination).where(Outbound.sop_instance_uid == sop_uid))
    )
    rows = [
        Outbound(
            instance_id=instance.id,
            kind=kind.value,
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=sop_uid,
            file_path=str(path),
            destination=key,
            state=OutboundState.PENDING,
            attempts=0,
            next_attempt_at=utcnow(),
        )
        for key in (destination_key(d) for d in settings.destinations)
        if key not in known
    ]
    session.add_all(rows)
    return rows
