"""``serve`` and the database commands against a PostgreSQL server that is not there: one line
naming the server without its password, exit 1, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.daemon import base_sections, osteoflag, write_config
from testkit.net import free_port

PASSWORD = "s3cret-pw"


@pytest.mark.parametrize(
    "command",
    [("serve",), ("status", "--json"), ("requeue",), ("feedback", "export", "--out", "fb")],
)
def test_unreachable_postgresql_is_one_line_without_the_password(
    tmp_path: Path, tiny_bundle: Path, command: tuple[str, ...]
) -> None:
    sections = base_sections(tmp_path, tiny_bundle)
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://osteoflag:{PASSWORD}@127.0.0.1:{port}/osteoflag"
    sections["storage"]["database_url"] = url
    config = write_config(tmp_path, sections)
    done = osteoflag(*command, config=config)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    shown = f"postgresql+psycopg://osteoflag:***@127.0.0.1:{port}/osteoflag"
    assert last.startswith(f"osteoflag: database {shown} cannot be reached: ")
