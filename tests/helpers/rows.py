"""Queue rows for tests that start after classification (sender, outage, TLS delivery)."""

from __future__ import annotations

import pydicom
from sqlalchemy.orm import Session

from osteoflag.config import Settings
from osteoflag.db.models import Instance, InstanceState, Outbound, utcnow
from osteoflag.db.outbound import add_pending
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.outbound import destinations_by_kind, write_objects


def produce_for(
    session: Session,
    source: pydicom.Dataset,
    result: Classification,
    model: ModelIdentity,
    settings: Settings,
    region: Region | None = None,
) -> list[Outbound]:
    """A ``done`` instance row for ``source`` and its outbound objects, in ``session``."""
    instance = Instance(
        sop_instance_uid=source.SOPInstanceUID,
        sop_class_uid=source.SOPClassUID,
        transfer_syntax_uid=str(source.file_meta.TransferSyntaxUID),
        calling_ae="MODALITY",
        peer_address="127.0.0.1",
        file_path="/nonexistent",
        state=InstanceState.DONE,
    )
    session.add(instance)
    session.flush()
    return produce(session, instance, source, result, model, settings, region)


def produce(
    session: Session,
    instance: Instance,
    source: pydicom.Dataset,
    result: Classification,
    model: ModelIdentity,
    settings: Settings,
    region: Region | None = None,
) -> list[Outbound]:
    """The objects of ``result`` written now, and their outbound rows added to ``session``."""
    written = write_objects(instance, source, result, model, settings, utcnow(), region=region)
    return add_pending(session, instance, written, destinations_by_kind(settings))
