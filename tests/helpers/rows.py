"""Queue rows for tests that start after classification (sender, outage, TLS delivery)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, reading, session_factory
from osteoflag.db.models import Instance, InstanceState, Outbound, utcnow
from osteoflag.db.outbound import add_pending
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.outbound import destinations_by_kind, write_objects


@contextmanager
def queue_in(storage: Path) -> Iterator[sessionmaker[Session]]:
    """The migrated SQLite queue at ``storage/db.sqlite``, the database that sender tests'
    settings name, disposed of afterwards."""
    engine = make_engine(f"sqlite:///{storage / 'db.sqlite'}")
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


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


def received(sessions: sessionmaker[Session], paths: Sequence[str]) -> list[int]:
    """One queued instance per file path (SOP Instance UIDs 1.2.3.N); every instance id."""
    for n, path in enumerate(paths):
        queue.enqueue(
            sessions,
            queue.Received(
                f"1.2.3.{n}",
                "1.2.840.10008.5.1.4.1.1.1.1",
                "1.2.840.10008.1.2.1",
                "MOD",
                "127.0.0.1",
                path,
            ),
        )
    with reading(sessions) as session:
        return list(session.scalars(select(Instance.id).order_by(Instance.id)))
