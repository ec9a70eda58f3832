"""From a recorded classification to the objects owed to the PACS.

The worker calls the hook built here inside the transaction that marks the instance
``done``, so the result and its delivery obligation (SR, summary image, one outbound
row per destination) are committed together or not at all.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from osteoflag.config import Settings
from osteoflag.db import queue
from osteoflag.db.models import Instance
from osteoflag.inference.worker import OnDone, read_dataset
from osteoflag.pacs.derived import Classification, Label, ModelIdentity
from osteoflag.pacs.outbound import produce_outbound


def outbound_hook(settings: Settings, model: ModelIdentity) -> OnDone:
    """The worker's ``on_done``: note the source's identifiers, produce and queue its objects."""

    def on_done(session: Session, instance: Instance, result: queue.Result) -> None:
        source = read_dataset(Path(instance.file_path))
        row = session.get(Instance, instance.id)
        if row is not None:
            row.study_instance_uid = str(source.get("StudyInstanceUID", "")) or None
            row.series_instance_uid = str(source.get("SeriesInstanceUID", "")) or None
            row.body_part = str(source.get("BodyPartExamined", "")).strip() or None
        classification = Classification(label=Label(result.label), probability=result.probability)
        produce_outbound(session, instance, source, classification, model, settings)

    return on_done
