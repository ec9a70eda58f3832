"""Engine creation and schema migration.

SQLite runs in WAL mode with ``synchronous=FULL`` (a committed row survives power loss,
not just a process crash) and every transaction starts with ``BEGIN IMMEDIATE``, so
two writers never deadlock upgrading a read lock. PostgreSQL needs none of this.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.errors import ConfigError, DatabaseUnavailable, PermanentError

MIGRATIONS = Path(__file__).with_name("migrations")
READ_ONLY = "osteoflag_read_only"
#: PostgreSQL advisory lock key held while migrating (any fixed 64-bit number of ours).
MIGRATION_LOCK = 0x05_7E_0F_1A_6D_B0


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would defer it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # Readers take no lock in WAL mode, so they never wait behind a writer.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _private_sqlite_file(database: Path) -> None:
    """Create the database file owner-only (it holds patient-linked rows) before SQLite does.

    SQLite gives its ``-wal`` and ``-shm`` files the database file's permissions, so
    these follow; an existing file of ours with looser permissions is tightened.
    """
    if not database.exists():
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
    status = database.stat()
    if status.st_uid == os.getuid() and status.st_mode & 0o077:
        os.chmod(database, 0o600)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; creates a SQLite file (owner-only) and its folder if needed."""
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"invalid value for 'storage.database_url': {exc}") from exc
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                _private_sqlite_file(Path(database))
            except OSError as exc:
                raise ConfigError(
                    f"invalid value for 'storage.database_url': cannot create {database}: {exc}"
                ) from exc
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (rows are handed between threads)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for queries only: on SQLite its transaction is deferred and takes no lock."""
    with sessions() as session:
        session.connection(execution_options={READ_ONLY: True})
        yield session


@contextmanager
def database_errors(doing: str) -> Iterator[None]:
    """Wrap SQLAlchemy errors raised while ``doing`` something into our two kinds.

    A lock held past the busy timeout ("database is locked") or a dropped connection (a
    PostgreSQL restart or fail-over) clears by itself: :class:`DatabaseUnavailable`. Anything
    else (a constraint, a bad statement) will not: :class:`PermanentError`. Only the
    driver's first line is kept: the statement and its parameters stay out of the message.
    """
    try:
        yield
    except SQLAlchemyError as exc:
        message = f"database error while {doing}: {_first_line(exc)}"
        invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
        if invalidated or isinstance(exc, (OperationalError, InterfaceError)):
            raise DatabaseUnavailable(message) from exc
        raise PermanentError(message) from exc


def _first_line(exc: SQLAlchemyError) -> str:
    detail = str(exc.orig) if isinstance(exc, DBAPIError) else ""
    lines = detail.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; run at every start).

    On PostgreSQL several processes may start at once against one database, so the
    upgrade runs under a session advisory lock: the first migrates, the others then
    find the schema current. SQLite's ``BEGIN IMMEDIATE`` already serialises them.
    """
    if engine.dialect.name != "postgresql":
        _upgrade(engine)
        return
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        try:
            _upgrade(engine)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})


def _upgrade(engine: Engine) -> None:
    """Upgrade to head, unless the schema is at a revision we do not know: a newer osteoflag
    migrated it, and Alembic would only say it cannot locate that revision."""
    config = _alembic_config(engine)
    script = ScriptDirectory.from_config(config)
    current = _current_revision(engine)
    known = {revision.revision for revision in script.walk_revisions()}
    if current is not None and current not in known:
        raise ConfigError(
            f"storage.database_url: the database schema is at revision {current!r}, which this "
            f"osteoflag does not know (its newest is {script.get_current_head()!r}): it was "
            "migrated by a newer osteoflag; run that version, or restore a backup"
        )
    command.upgrade(config, "head")


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest migration."""
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    return _current_revision(engine) == head


def _current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
