"""``osteoflag serve`` started by mistake beside a running daemon (same SQLite database, same
ports): it fails on the port, and fails before its start-up recovery can re-queue the running
daemon's work."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select

from osteoflag.config import parse_settings
from osteoflag.daemon.roles import Role
from osteoflag.daemon.service import Daemon
from osteoflag.db import queue
from osteoflag.db.engine import migrate
from osteoflag.db.models import Instance, InstanceState
from osteoflag.errors import ConfigError
from tests.conftest import make_settings

LIVE = "all:pacs-side:4242:0a0b0c0d"


@pytest.mark.parametrize("busy", ["listener", "web"])
def test_a_second_daemon_on_busy_ports_leaves_the_running_ones_claims_alone(
    busy: str, tmp_path: Path, tiny_bundle: Path
) -> None:
    with socket.socket() as taken:  # the running daemon's port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sections = {"model": {"bundle": str(tiny_bundle)}, busy: {"port": port}}
        second = Daemon(make_settings(tmp_path, **sections))
        migrate(second.engine)
        received = queue.Received(
            "1.2.3.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1", "M", "x", "/x"
        )
        assert queue.enqueue(second.sessions, received)
        assert queue.claim_instances(second.sessions, LIVE, 1, timedelta(minutes=10))
        with pytest.raises(ConfigError, match="cannot listen"):
            second.start()
    with second.sessions() as session:
        row = session.scalars(select(Instance)).one()
    second.engine.dispose()
    assert (row.state, row.lease_owner, row.attempts) == (InstanceState.PROCESSING, LIVE, 1)


@pytest.mark.parametrize(
    ("sections", "warned"),
    [
        ({}, True),
        ({"shadow": True}, False),
        ({"destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}]}, False),
    ],
)
def test_a_worker_with_nowhere_to_send_says_it_builds_nothing(
    sections: dict[str, Any],
    warned: bool,
    tmp_path: Path,
    tiny_bundle: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Results are still recorded, but an operator who forgot ``[[destinations]]`` must learn
    from the log why no SR ever reaches the PACS."""
    data = {
        "model": {"bundle": str(tiny_bundle)},
        "storage": {"path": str(tmp_path / "var")},
        **sections,
    }
    with caplog.at_level(logging.WARNING, logger="osteoflag.daemon.service"):
        daemon = Daemon(parse_settings(data, tmp_path), Role.WORKER)
    daemon.engine.dispose()
    said = [r.getMessage() for r in caplog.records if "no object is built" in r.getMessage()]
    assert said == (
        [
            "no destination and shadow mode off: results are recorded and shown on the "
            "operator page, no object is built or sent"
        ]
        if warned
        else []
    )


@pytest.mark.parametrize("role", [Role.LISTENER, Role.SENDER])
def test_a_split_role_on_sqlite_is_refused_before_anything_runs(role: Role, tmp_path: Path) -> None:
    """Beside another process on SQLite nothing would wake it, and an all-in-one process
    starting there would re-queue its live claims: the role says so instead of serving."""
    settings = make_settings(tmp_path)
    daemon = Daemon(settings, role)
    with pytest.raises(ConfigError, match=f"--role {role.value}: .*SQLite.*PostgreSQL"):
        daemon.start()
    assert not inspect(daemon.engine).get_table_names()  # refused before the migrations
    daemon.engine.dispose()
    with socket.socket() as port:  # and before the listener's port
        port.bind((settings.listener.host, settings.listener.port))
