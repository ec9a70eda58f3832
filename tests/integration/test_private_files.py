"""The SQLite database holds patient-linked rows: it and its WAL files are owner-only."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy import text

from osteoflag.db.engine import make_engine, migrate


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_database_and_its_wal_files_are_owner_only(tmp_path: Path) -> None:
    database = tmp_path / "var" / "osteoflag.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        migrate(engine)
        with engine.connect() as connection:  # keeps -wal and -shm in place while we look
            connection.execute(text("SELECT count(*) FROM instances"))
            files = [database, *database.parent.glob("osteoflag.db-*")]
            assert len(files) == 3
            assert {path.name: _mode(path) for path in files} == {
                path.name: 0o600 for path in files
            }
    finally:
        engine.dispose()
    assert _mode(database.parent) == 0o700


def test_existing_database_with_loose_permissions_is_tightened(tmp_path: Path) -> None:
    database = tmp_path / "osteoflag.db"
    database.touch(mode=0o644)
    database.chmod(0o644)
    make_engine(f"sqlite:///{database}").dispose()
    assert _mode(database) == 0o600
