"""Relative paths in a config file resolve against its folder, not the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from osteoflag.config import load_settings
from osteoflag.db.engine import make_engine, migrate


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])
def test_a_relative_sqlite_database_lives_beside_the_config_whichever_driver_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "osteoflag.toml"
    config.write_text(f'[storage]\ndatabase_url = "{scheme}:///var/queue.db?timeout=5"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    engine = make_engine(load_settings(config).storage.database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()

    assert (folder / "var" / "queue.db").is_file()
    assert list(elsewhere.iterdir()) == []
