"""``osteoflag serve`` as a subprocess fed PDUs that announce hundreds of megabytes: the daemon
closes them at their header, and its peak RSS (VmHWM) grows by at most 100 MB."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from osteoflag.pacs.scu import Peer, send_c_echo
from testkit.daemon import DaemonProcess, base_sections, write_config
from tests.acceptance.test_hostile_daemon import _peak_rss_mb
from tests.helpers.ul import associate_rq

GROWTH_LIMIT_MB = 100
MB = 1_000_000


def _stream(sock: socket.socket, header: bytes, announced: int) -> int:
    """Send ``header``, then zeros up to ``announced`` bytes or until the daemon hangs up."""
    sock.settimeout(30)
    sock.sendall(header)
    chunk = bytes(1 << 20)
    sent = 0
    try:
        while sent < announced:
            sock.sendall(chunk[: announced - sent])
            sent += min(len(chunk), announced - sent)
    except OSError:
        pass  # closed or reset by the daemon: what this test wants
    return sent


def _associated(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(associate_rq(b"OSTEOFLAG", b"BIGPDU"))
    header = sock.recv(6, socket.MSG_WAITALL)
    assert header[:1] == b"\x02", header  # A-ASSOCIATE-AC
    sock.recv(struct.unpack_from(">I", header, 2)[0], socket.MSG_WAITALL)
    return sock


@pytest.mark.timeout(240)
def test_oversized_pdus_do_not_grow_the_daemon(tmp_path: Path, tiny_bundle: Path) -> None:
    sections = base_sections(tmp_path, tiny_bundle)
    sections["listener"]["max_dataset_mb"] = 16
    with DaemonProcess(write_config(tmp_path, sections), sections["listener"]["port"]) as daemon:
        assert daemon.process is not None
        peer = Peer("127.0.0.1", daemon.port, "OSTEOFLAG")
        assert send_c_echo(peer, "CHECK") == 0
        before = _peak_rss_mb(daemon.process.pid)

        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            rq_sent = _stream(sock, struct.pack(">BBI", 0x01, 0, 300 * MB), 300 * MB)
        with _associated(daemon.port) as sock:
            p_data_sent = _stream(sock, struct.pack(">BBI", 0x04, 0, 400 * MB), 400 * MB)

        assert send_c_echo(peer, "CHECK") == 0
        after = _peak_rss_mb(daemon.process.pid)
    print(
        f"\noversized PDUs: A-ASSOCIATE-RQ of 300 MB ({rq_sent / MB:.0f} MB sent before the "
        f"daemon hung up), P-DATA-TF of 400 MB ({p_data_sent / MB:.0f} MB sent); daemon peak "
        f"RSS {before} MB before, {after} MB after"
    )
    assert after - before <= GROWTH_LIMIT_MB
