"""Only the kinds of object some destination takes are built: the worker with its real hook,
a real tiny bundle and SQLite queue in tmp_path, delivery to real Storage SCPs on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.daemon.results import Reporting
from osteoflag.daemon.worker import InferenceWorker
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Event, Instance, InstanceState, Outbound
from osteoflag.db.outbound import SHADOW_EVENT
from osteoflag.destination_settings import Destination, ObjectKind
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs.derived import Kind, ModelIdentity, instance_uid
from osteoflag.pacs.sender import send_pending
from testkit.inference_data import dataset, radiograph, save
from tests.conftest import make_settings
from tests.sr_fixtures import RecordingSCP

UID = "1.2.826.0.1.3680043.8.498.7001"


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor(load_bundle(tiny_bundle), threads=1, batch_size=4)


@pytest.fixture
def peers() -> Iterator[tuple[RecordingSCP, RecordingSCP]]:
    servers = (RecordingSCP(ae_title="SRONLY"), RecordingSCP(ae_title="ALL"))
    yield servers
    for server in servers:
        server.stop()


def _to(peer: RecordingSCP, objects: tuple[ObjectKind, ...], shadow: bool = False) -> Destination:
    return Destination(
        ae_title=peer.ae.ae_title, host="127.0.0.1", port=peer.port, objects=objects, shadow=shadow
    )


def _classify(
    tmp_path: Path, predictor: Predictor, destinations: list[Destination], shadow: bool = False
) -> tuple[Settings, sessionmaker[Session]]:
    """One radiograph received, classified and finished by the daemon's own hook; then one
    sender run."""
    settings = make_settings(tmp_path).model_copy(
        update={"destinations": tuple(destinations), "shadow": shadow}
    )
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    path = save(dataset(radiograph(), bits_stored=12), tmp_path / "source.dcm")
    received = queue.Received(
        UID, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1", "MOD", "127.0.0.1", str(path)
    )
    assert queue.enqueue(sessions, received)
    model = ModelIdentity.from_bundle(predictor.bundle)
    assert InferenceWorker(settings, sessions, predictor, Reporting(settings, model)).drain() == 1
    with sessions() as session:
        assert session.scalars(select(Instance.state)).one() is InstanceState.DONE
    send_pending(sessions, settings)
    return settings, sessions


def _written(settings: Settings) -> dict[str, list[str]]:
    """The produced files under outgoing/, by kind (the folder's name): SOP Instance UIDs."""
    root = settings.outgoing_path
    folders = sorted(root.iterdir()) if root.is_dir() else []
    return {f.name: sorted(p.stem for p in f.iterdir()) for f in folders if any(f.iterdir())}


def _uid(predictor: Predictor, kind: Kind) -> str:
    return str(instance_uid(UID, predictor.bundle.manifest.version, kind))


def _kept(sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    with sessions() as session:
        details = session.scalars(select(Event.detail).where(Event.action == SHADOW_EVENT))
        return [json.loads(str(detail)) for detail in details]


def test_no_summary_is_built_when_every_destination_takes_the_sr_only(
    tmp_path: Path, predictor: Predictor, peers: tuple[RecordingSCP, RecordingSCP]
) -> None:
    sr_only, _ = peers
    settings, sessions = _classify(tmp_path, predictor, [_to(sr_only, ("sr",))])
    sr = _uid(predictor, Kind.SR)
    assert _written(settings) == {"sr": [sr]}  # no summary file, no empty folder for one
    assert sr_only.received == [sr]
    with sessions() as session:
        assert [row.kind for row in session.scalars(select(Outbound))] == ["sr"]


def test_a_destination_that_takes_the_summary_still_gets_it(
    tmp_path: Path, predictor: Predictor, peers: tuple[RecordingSCP, RecordingSCP]
) -> None:
    sr_only, everything = peers
    destinations = [_to(sr_only, ("sr",)), _to(everything, ("sr", "gsps", "summary"))]
    settings, _ = _classify(tmp_path, predictor, destinations)
    sr, summary = _uid(predictor, Kind.SR), _uid(predictor, Kind.SUMMARY)
    assert _written(settings) == {"sr": [sr], "summary": [summary]}
    assert sr_only.received == [sr]
    assert sorted(everything.received) == sorted([sr, summary])


def test_a_shadow_destination_counts_and_keeps_only_what_it_takes(
    tmp_path: Path, predictor: Predictor, peers: tuple[RecordingSCP, RecordingSCP]
) -> None:
    sr_only, shadowed = peers
    destinations = [_to(sr_only, ("sr",)), _to(shadowed, ("summary",), shadow=True)]
    settings, sessions = _classify(tmp_path, predictor, destinations)
    sr, summary = _uid(predictor, Kind.SR), _uid(predictor, Kind.SUMMARY)
    assert _written(settings) == {"sr": [sr], "summary": [summary]}  # for the operator page
    assert sr_only.received == [sr] and shadowed.received == []
    [kept] = _kept(sessions)
    assert kept["kind"] == "summary"
    assert kept["not_sent_to"] == [f"ALL@127.0.0.1:{shadowed.port}"]


def test_top_level_shadow_without_destinations_keeps_every_kind(
    tmp_path: Path, predictor: Predictor
) -> None:
    settings, sessions = _classify(tmp_path, predictor, [], shadow=True)
    written = _written(settings)
    assert written == {"sr": [_uid(predictor, Kind.SR)], "summary": [_uid(predictor, Kind.SUMMARY)]}
    assert sorted((k["kind"], k["not_sent_to"]) for k in _kept(sessions)) == [
        ("sr", []),
        ("summary", []),
    ]


def test_nothing_is_built_without_destinations_or_shadow_mode(
    tmp_path: Path, predictor: Predictor
) -> None:
    settings, sessions = _classify(tmp_path, predictor, [])
    assert _written(settings) == {}
    assert _kept(sessions) == []
    with sessions() as session:
        assert session.scalars(select(Instance.probability)).one() is not None  # still recorded
