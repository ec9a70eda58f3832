"""Migrations: the migrated schema equals the models, and rows made at every revision survive.

Runs on SQLite (batch mode) and on the run's private PostgreSQL server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, MetaData, Table, inspect, select, text

from osteoflag.db.engine import MIGRATIONS, make_engine, migrate, schema_is_current
from osteoflag.db.models import Base
from testkit.postgres import PostgresServer


def _alembic(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def _columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def _check_upgrade_keeps_rows_and_matches_models(engine: Engine) -> None:
    command.upgrade(_alembic(engine), "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
                " calling_ae, peer_address, received_at, file_path, state, attempts,"
                " next_attempt_at) VALUES ('1.2.3', '1.2.4', '1.2.840.10008.1.2.1', 'MOD',"
                " '127.0.0.1', CURRENT_TIMESTAMP, '/x.dcm', 'done', 1, CURRENT_TIMESTAMP)"
            )
        )
    assert "removed_at" not in _columns(engine, "instances")

    migrate(engine)

    assert schema_is_current(engine)
    assert "removed_at" in _columns(engine, "instances")
    assert "removed_at" in _columns(engine, "outbound")
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        rows = connection.execute(text("SELECT sop_instance_uid, state, removed_at FROM instances"))
        assert [tuple(row) for row in rows] == [("1.2.3", "done", None)]

    command.downgrade(_alembic(engine), "0001")
    assert "removed_at" not in _columns(engine, "outbound")
    migrate(engine)
    assert schema_is_current(engine)


def test_sqlite_migrations(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        _check_upgrade_keeps_rows_and_matches_models(engine)
    finally:
        engine.dispose()


def test_postgresql_migrations(postgres: PostgresServer) -> None:
    engine = make_engine(postgres.database())
    try:
        _check_upgrade_keeps_rows_and_matches_models(engine)
    finally:
        engine.dispose()


def _linked_rows(engine: Engine) -> list[tuple[str, int | None]]:
    with engine.connect() as connection:
        events = connection.execute(text("SELECT action, instance_id FROM events"))
        objects = connection.execute(text("SELECT kind, instance_id FROM outbound"))
        return [(str(name), link) for name, link in (*events, *objects)]


def test_sqlite_downgrade_keeps_events_and_objects_linked_to_their_instance(
    tmp_path: Path,
) -> None:
    """Batch mode rebuilds ``instances`` by dropping it: its events and outbound objects must
    keep their ``instance_id`` (foreign keys on, the drop would set them NULL)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        migrate(engine)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO instances (id, sop_instance_uid, sop_class_uid,"
                    " transfer_syntax_uid, calling_ae, peer_address, received_at, file_path,"
                    " state, attempts, next_attempt_at) VALUES (7, '1.2.3', '1.2.4',"
                    " '1.2.840.10008.1.2.1', 'MOD', '127.0.0.1', CURRENT_TIMESTAMP, '/x.dcm',"
                    " 'done', 1, CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO events (instance_id, at, action)"
                    " VALUES (7, CURRENT_TIMESTAMP, 'received')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO outbound (instance_id, kind, sop_class_uid, sop_instance_uid,"
                    " file_path, destination, state, attempts, next_attempt_at, created_at)"
                    " VALUES (7, 'sr', '1.2.5', '1.2.6', '/sr.dcm', 'PACS@127.0.0.1:4242',"
                    " 'pending', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )

        command.downgrade(_alembic(engine), "0001")
        assert _linked_rows(engine) == [("received", 7), ("sr", 7)]
        migrate(engine)
        assert _linked_rows(engine) == [("received", 7), ("sr", 7)]
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


#: Values for the enumerated columns, which a generated string would break.
_ENUMERATED = {
    "state": {"instances": "done", "outbound": "sent"},
    "label": {"feedback": "fracture"},
}
_REVISIONS = ["0001", "0002", "0003", "0004", "0005"]


def _value(table: Table, column: Column[Any]) -> object:
    """A value of the column's type: every column filled, so every value's survival shows."""
    if (table.name, column.name) in _ENUMERATED:
        return _ENUMERATED[table.name, column.name]
    if column.foreign_keys or column.name == "id":
        return 1  # the one instance row
    python_type = column.type.python_type
    if python_type is str:
        length = getattr(column.type, "length", None) or 16
        return f"{table.name}.{column.name}"[:length]
    if python_type is datetime:
        return datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    return python_type(1)  # int, float, bool


def _rows(engine: Engine, tables: list[Table]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables``, only their columns (those the older revision had)."""
    with engine.connect() as connection:
        return {
            table.name: [tuple(row) for row in connection.execute(select(*table.columns))]
            for table in tables
        }


def _check_rows_survive_upgrade_from(engine: Engine, revision: str) -> None:
    command.upgrade(_alembic(engine), revision)
    old = MetaData()
    old.reflect(engine)
    tables = [table for table in old.sorted_tables if table.name != "alembic_version"]
    with engine.begin() as connection:
        for table in tables:  # parents first: instances before the rows naming them
            connection.execute(
                table.insert().values(
                    {column.name: _value(table, column) for column in table.columns}
                )
            )
    before = _rows(engine, tables)
    migrate(engine)
    assert schema_is_current(engine)
    assert _rows(engine, tables) == before
    assert all(len(rows) == 1 for rows in before.values())


@pytest.mark.parametrize("revision", _REVISIONS)
def test_sqlite_rows_made_at_each_revision_survive_the_upgrade(
    tmp_path: Path, revision: str
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        _check_rows_survive_upgrade_from(engine, revision)
    finally:
        engine.dispose()


@pytest.mark.parametrize("revision", _REVISIONS)
def test_postgresql_rows_made_at_each_revision_survive_the_upgrade(
    postgres: PostgresServer, revision: str
) -> None:
    engine = make_engine(postgres.database())
    try:
        _check_rows_survive_upgrade_from(engine, revision)
    finally:
        engine.dispose()
