"""``osteoflag serve`` started by mistake beside a running daemon (same SQLite database, same
ports): it fails on the port, and fails before its start-up recovery can re-queue the running
daemon's work."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

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
