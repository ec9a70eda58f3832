"""From a worker outcome to the objects owed to the PACS.

The objects are built and written before the transaction that records the outcome (no
database lock held while they are); their rows join that transaction, so the result and
its delivery obligation (SR, summary image, one outbound row per destination) are
committed together or not at all.
"""

from __future__ import annotations

from pydicom import Dataset
from sqlalchemy.orm import Session

from osteoflag.config import Settings
from osteoflag.db import queue
from osteoflag.db.models import Instance
from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import GreyArray
from osteoflag.inference.worker import OnDone, OnRefused, Record
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.outbound import add_outbound, produce_undetermined, write_objects


def _note_source(session: Session, instance: Instance, source: Dataset) -> None:
    """Keep the study, series and body part on the row, for the operator page and retention."""
    row = session.get(Instance, instance.id)
    if row is not None:
        row.study_instance_uid = str(source.get("StudyInstanceUID", "")) or None
        row.series_instance_uid = str(source.get("SeriesInstanceUID", "")) or None
        row.body_part = str(source.get("BodyPartExamined", "")).strip() or None


def outbound_hook(settings: Settings, model: ModelIdentity) -> OnDone:
    """The worker's ``on_done``: write the SR (and summary image), then queue them."""

    def on_done(
        instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record:
        classification = Classification(label=Label(result.label), probability=result.probability)
        written = write_objects(instance, source, classification, model, settings, grey=grey)

        def record(session: Session) -> None:
            _note_source(session, instance, source)
            add_outbound(session, instance, written, settings)

        return record

    return on_done


def refused_hook(settings: Settings, model: ModelIdentity) -> OnRefused:
    """The worker's ``on_refused``: an Undetermined SR for skipped/failed, when configured."""

    def on_refused(session: Session, instance: Instance, source: Dataset, reason: str) -> None:
        _note_source(session, instance, source)
        produce_undetermined(session, instance, source, reason, model, settings)

    return on_refused
