"""Reception: slow, silent, closed and refused peers cannot hold the listener's slots, and PDU
lengths are enforced when each header is read (real sockets on loopback)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from osteoflag.pacs.scu import Peer, send_c_echo, send_c_store
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.helpers.listener import echo_ok, listening
from tests.helpers.ul import (
    ASSOCIATE_RJ_LENGTH,
    a_abort,
    associate_rj,
    associate_rq,
    closed_by_peer,
)


@contextmanager
def dribbling(port: int, count: int, interval: float = 0.2) -> Iterator[list[socket.socket]]:
    """``count`` peers that send an A-ASSOCIATE-RQ header, then one byte every ``interval`` s."""
    request = associate_rq(b"OSTEOFLAG", b"SLOWLORIS")
    peers = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for peer in peers:
        peer.sendall(request[:6])
    stop = threading.Event()

    def drip() -> None:
        offset = 6
        while not stop.wait(interval) and offset < len(request):
            for peer in peers:
                with contextlib.suppress(OSError):  # closed by the listener
                    peer.sendall(request[offset : offset + 1])
            offset += 1

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        yield peers
    finally:
        stop.set()
        thread.join()
        for peer in peers:
            peer.close()


def test_slow_peers_do_not_lock_out_a_legitimate_echo(tmp_path: Path) -> None:
    limits = {"max_associations": 2, "max_pending_associations": 4, "acse_timeout": 30}
    with listening(tmp_path, **limits) as (scp, _), dribbling(scp.port, count=8) as peers:
        # Within the slow peers' 30 s, while they still send: every echo gets through.
        assert all(echo_ok(scp.port) for _ in range(3))
        still_sending = sum(1 for peer in peers if _open(peer))
    assert still_sending >= 1  # some slow peers were still connected during the echoes


def _open(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        return peer.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # nothing to read and not closed
    except OSError:
        return False
    finally:
        peer.setblocking(True)


def test_request_must_arrive_whole_within_acse_timeout(tmp_path: Path) -> None:
    with listening(tmp_path, acse_timeout=1.0) as (scp, _), dribbling(scp.port, 1, 0.1) as [peer]:
        # A byte every 0.1 s would restart a per-receive timeout forever; the deadline holds.
        assert closed_by_peer(peer) == b""


def test_closed_connections_free_their_slot_at_once(tmp_path: Path) -> None:
    with listening(tmp_path, max_associations=2, acse_timeout=30) as (scp, _):
        request = associate_rq(b"OSTEOFLAG", b"QUITTER")
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", scp.port)) as sock:
                sock.sendall(request[:40])
        assert echo_ok(scp.port)


def test_refused_caller_is_rejected_before_its_request_is_complete(tmp_path: Path) -> None:
    with listening(tmp_path, allowed_calling_aets=["RADIOLOGY"], acse_timeout=30) as (scp, _):
        request = associate_rq(b"OSTEOFLAG", b"INTRUDER")
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as sock:
            sock.sendall(request[:42])  # header, fixed fields up to the calling AE title
            reply = sock.recv(ASSOCIATE_RJ_LENGTH, socket.MSG_WAITALL)
        # A-ASSOCIATE-RJ: rejected permanent, service user, calling AE title not recognised.
        assert reply == associate_rj(1, 1, 3)
        assert send_c_echo(Peer("127.0.0.1", scp.port, "OSTEOFLAG"), "RADIOLOGY") == 0


def test_refused_caller_sending_the_rest_of_its_request_late_sees_an_orderly_close(
    tmp_path: Path,
) -> None:
    # The rest of the request arriving after the rejection must be read, not answered with a
    # reset that can destroy the A-ASSOCIATE-RJ before the peer reads it.
    with listening(tmp_path, allowed_calling_aets=["RADIOLOGY"], acse_timeout=30) as (scp, _):
        request = associate_rq(b"OSTEOFLAG", b"INTRUDER")
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as sock:
                sock.sendall(request[:42])
                reply = sock.recv(ASSOCIATE_RJ_LENGTH, socket.MSG_WAITALL)
                sock.sendall(request[42:])
                sock.sendall(request)  # a confused peer tries again on the same connection
                assert reply == associate_rj(1, 1, 3)
                assert closed_by_peer(sock) == b""  # end of stream, not ECONNRESET


def test_associate_rq_announcing_300_mb_is_closed_after_its_header(tmp_path: Path) -> None:
    with listening(tmp_path) as (scp, _):
        with socket.create_connection(("127.0.0.1", scp.port)) as sock:
            sock.sendall(struct.pack(">BBI", 0x01, 0, 300_000_000) + bytes(4096))
            assert closed_by_peer(sock) == b""
        assert echo_ok(scp.port)


def _associated(port: int) -> socket.socket:
    """A raw connection with an established association (the A-ASSOCIATE-AC read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq(b"OSTEOFLAG", b"RAWPEER"))
    header = sock.recv(6, socket.MSG_WAITALL)
    assert header[0] == 0x02, header  # A-ASSOCIATE-AC
    sock.recv(struct.unpack_from(">I", header, 2)[0], socket.MSG_WAITALL)
    return sock


def test_p_data_longer_than_maximum_pdu_size_is_aborted_unread(tmp_path: Path) -> None:
    with listening(tmp_path, maximum_pdu_size=16384) as (scp, _):
        with _associated(scp.port) as sock:
            sock.sendall(struct.pack(">BBI", 0x04, 0, 16385) + bytes(1024))
            # A-ABORT: service provider, invalid PDU parameter value; then the connection ends.
            assert closed_by_peer(sock) == a_abort(2, 6)
        # pynetdicom fills PDUs to exactly the announced maximum: a 40 kB data set passes.
        path = write_in_syntax(
            radiograph(rows=200, columns=200), ExplicitVRLittleEndian, tmp_path / "a.dcm"
        )
        [outcome] = send_c_store([path], Peer("127.0.0.1", scp.port, "OSTEOFLAG"), "FULLPDUS")
        assert outcome.status == 0
