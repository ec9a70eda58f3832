"""A real Storage SCP for a test, on its own migrated SQLite database, stopped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.errors import DeliveryError
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.scu import Peer, send_c_echo
from tests.conftest import make_settings


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[StorageSCP, sessionmaker[Session]]]:
    """The listener of ``settings``, started, and its queue's sessions."""
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    scp = StorageSCP(settings, sessions)
    scp.start()
    try:
        yield scp, sessions
    finally:
        scp.stop(timeout=5)
        engine.dispose()


@contextmanager
def listening(
    tmp_path: Path, **listener: Any
) -> Iterator[tuple[StorageSCP, sessionmaker[Session]]]:
    """:func:`serving` with these ``[listener]`` settings."""
    with serving(make_settings(tmp_path, listener=listener)) as served:
        yield served


def echo_ok(port: int) -> bool:
    """Whether the listener on ``port`` still answers a C-ECHO."""
    try:
        return send_c_echo(Peer("127.0.0.1", port, "OSTEOFLAG"), "CHECK", timeout=5) == 0
    except DeliveryError:
        return False
