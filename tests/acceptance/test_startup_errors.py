"""``osteoflag serve`` with a configuration it cannot run with: one line on stderr, exit 2, no
traceback, and no process left behind (each case runs to completion within the timeout)."""

from __future__ import annotations

import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from testkit.daemon import base_sections, osteoflag, write_config


@contextmanager
def _busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _long_ae_title(sections: dict[str, Any], folder: Path) -> None:
    sections["listener"]["allowed_calling_aets"] = ["A_TITLE_OF_17_CHR"]


def _unknown_log_level(sections: dict[str, Any], folder: Path) -> None:
    sections["log_level"] = "LOUD"


def _storage_under_a_file(sections: dict[str, Any], folder: Path) -> None:
    (folder / "a-file").write_text("not a folder")
    sections["storage"]["path"] = str(folder / "a-file" / "var")


def _tampered_bundle(sections: dict[str, Any], folder: Path) -> None:
    bundle = folder / "bundle"
    shutil.copytree(sections["model"]["bundle"], bundle)
    (bundle / "classifier.txt").write_text("tampered")
    sections["model"]["bundle"] = str(bundle)


def _database_from_a_newer_osteoflag(sections: dict[str, Any], folder: Path) -> None:
    database = folder / "newer.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES ('9999')")
    connection.close()
    sections["storage"]["database_url"] = f"sqlite:///{database}"


CASES: dict[str, tuple[Callable[[dict[str, Any], Path], None], str]] = {
    "long-allowlist-ae-title": (_long_ae_title, "listener.allowed_calling_aets"),
    "unknown-log-level": (_unknown_log_level, "log_level"),
    "storage-under-a-file": (_storage_under_a_file, "storage.path"),
    "tampered-bundle": (_tampered_bundle, "classifier.txt"),
    "database-from-a-newer-osteoflag": (_database_from_a_newer_osteoflag, "'9999'"),
}


def _assert_one_line_exit_2(done: Any, names: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    reason = done.stderr.strip().splitlines()[-1]  # after any JSON log lines
    assert reason.startswith("osteoflag: ") and names in reason, done.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_unusable_configuration_exits_2(tmp_path: Path, tiny_bundle: Path, case: str) -> None:
    change, names = CASES[case]
    sections = base_sections(tmp_path, tiny_bundle)
    change(sections, tmp_path)
    done = osteoflag("serve", config=write_config(tmp_path, sections), timeout=90)
    _assert_one_line_exit_2(done, names)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("part", ["listener", "web"])
def test_busy_port_exits_2(tmp_path: Path, tiny_bundle: Path, part: str) -> None:
    sections = base_sections(tmp_path, tiny_bundle)
    with _busy_port() as port:
        sections[part] = {**sections.get(part, {}), "port": port}
        done = osteoflag("serve", config=write_config(tmp_path, sections), timeout=90)
    _assert_one_line_exit_2(done, str(port))
