"""Fixtures shared by every ring: settings in tmp_path and an in-process Storage SCP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings, parse_settings
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.pacs.scp import StorageSCP
from testkit.net import free_port
from testkit.postgres import PostgresServer
from testkit.tiny_bundle import build_bundle


def make_settings(folder: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for one test: free loopback port, storage and SQLite under ``folder``."""
    data: dict[str, Any] = {
        "listener": {"port": free_port()},
        "storage": {
            "path": str(folder / "var"),
            "database_url": f"sqlite:///{folder / 'var' / 'osteoflag.db'}",
            "min_free_mb": 1,
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_settings(data, folder)


@pytest.fixture
def strict_pydicom() -> Iterator[None]:
    """pydicom raises on any invalid value, reading and writing (for round-trip tests)."""
    reading, writing = (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    )
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    yield
    pydicom_config.settings.reading_validation_mode = reading
    pydicom_config.settings.writing_validation_mode = writing


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small but real bundle (ONNX backbone + LightGBM), built once per test run."""
    return build_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the whole run; tests create their own databases."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_engine(postgres: PostgresServer) -> Iterator[Engine]:
    """A new, migrated database on the run's PostgreSQL server."""
    engine = make_engine(postgres.database())
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_sessions(pg_engine: Engine) -> sessionmaker[Session]:
    return session_factory(pg_engine)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def scp(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[StorageSCP]:
    listener = StorageSCP(settings, sessions)
    listener.start()
    yield listener
    listener.stop(timeout=5)
