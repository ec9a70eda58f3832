"""Before pynetdicom sees a connection: its A-ASSOCIATE-RQ, whole, in time, from an allowed caller.

pynetdicom reads a PDU of any announced length (up to 4 GiB) into memory, restarts its wait on
every byte, and checks the calling AE title only once the whole request is in; each of those
connections also holds one of ``max_associations`` slots meanwhile. So a connection is first
*pending*: its A-ASSOCIATE-RQ (PS3.8 9.3.2) must announce at most ``MAX_ASSOCIATE_RQ_LENGTH``
bytes and arrive whole within one overall deadline (``listener.acse_timeout``, the ARTIM time);
its calling AE title and address are checked as soon as its first 42 bytes are in, and a
refused caller gets its A-ASSOCIATE-RJ at once. At most ``listener.max_pending_associations``
connections are pending: a newcomer beyond that closes the oldest pending one (a real PACS
sends its request within milliseconds, a slow peer is the one that has waited longest). Only a
complete, admitted request reaches pynetdicom and counts against ``max_associations``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import cast

PDU_HEADER_LENGTH = 6
A_ASSOCIATE_RQ = 0x01
# Generous for a request proposing all 128 presentation contexts with many transfer syntaxes
# and extended negotiation (~90 KB); a 300 MB "request" is refused after its first 6 bytes.
MAX_ASSOCIATE_RQ_LENGTH = 256 * 1024
# Protocol version, reserved, called and calling AE titles, reserved (PS3.8 Table 9-11).
_FIXED_FIELDS_LENGTH = 68
_CALLING_AE = slice(26, 42)
# A-ASSOCIATE-RJ: rejected-permanent, DICOM UL service-user, calling AE title not recognised.
_REJECT_CALLING_AE = struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 0x01, 0x01, 0x03)
_DRAIN_LIMIT = MAX_ASSOCIATE_RQ_LENGTH
# A peer that has read its A-ASSOCIATE-RJ closes at once; one that does not is not waited for.
_LINGER_SECONDS = 2.0


class NotReceived(Exception):
    """Why a connection ends before pynetdicom gets it (the log line's reason)."""


class Rejected(NotReceived):
    """The caller was refused with A-ASSOCIATE-RJ (and the refusal already logged)."""


class ClosedEmpty(NotReceived):
    """The peer closed without sending anything (a port probe, a health check)."""


class PendingConnections:
    """Connections still waiting for their A-ASSOCIATE-RQ; past ``limit`` the oldest goes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending: dict[socket.socket, None] = {}  # insertion order: oldest first
        self._lock = threading.Lock()

    def admit(self, connection: socket.socket) -> None:
        """Count ``connection`` as pending, closing the oldest pending one if the budget is full."""
        evicted: socket.socket | None = None
        with self._lock:
            if len(self._pending) >= self._limit:
                evicted = next(iter(self._pending))
                del self._pending[evicted]
            self._pending[connection] = None
        if evicted is not None:
            _end(evicted)

    def release(self, connection: socket.socket) -> bool:
        """Stop counting ``connection``; False when it was evicted meanwhile."""
        with self._lock:
            if connection not in self._pending:
                return False
            del self._pending[connection]
            return True

    def close_all(self) -> None:
        """End every pending connection (the listener is stopping)."""
        with self._lock:
            pending, self._pending = list(self._pending), {}
        for connection in pending:
            _end(connection)


def _end(connection: socket.socket) -> None:
    """Shut ``connection`` down from another thread: its reader sees the end of the stream."""
    with contextlib.suppress(OSError):  # already gone
        connection.shutdown(socket.SHUT_RDWR)


def _recv(connection: socket.socket, size: int, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise NotReceived("A-ASSOCIATE-RQ not complete within acse_timeout")
    connection.settimeout(remaining)
    try:
        chunk = connection.recv(size)
    except TimeoutError:
        raise NotReceived("A-ASSOCIATE-RQ not complete within acse_timeout") from None
    except OSError as exc:
        raise NotReceived(f"connection error: {exc}") from exc
    if not chunk:
        raise NotReceived("connection closed before its A-ASSOCIATE-RQ was complete")
    return chunk


def _check_header(header: bytes) -> int:
    kind, _, length = cast(tuple[int, int, int], struct.unpack(">BBI", header))
    if kind != A_ASSOCIATE_RQ:
        raise NotReceived(f"PDU type 0x{kind:02X} where an A-ASSOCIATE-RQ was expected")
    if length > MAX_ASSOCIATE_RQ_LENGTH:
        raise NotReceived(
            f"A-ASSOCIATE-RQ announces {length} bytes, more than {MAX_ASSOCIATE_RQ_LENGTH}"
        )
    if length < _FIXED_FIELDS_LENGTH:
        raise NotReceived(f"A-ASSOCIATE-RQ announces {length} bytes, too short")
    return PDU_HEADER_LENGTH + length


def _reject(connection: socket.socket, calling_ae: str, deadline: float) -> Rejected:
    """Send A-ASSOCIATE-RJ, then read until the peer closes (by ``deadline``, at most
    ``_LINGER_SECONDS``): closing over data still in flight, such as the rest of the request,
    would reset the connection and the peer could lose the RJ before reading it."""
    try:
        connection.sendall(_REJECT_CALLING_AE)
        connection.shutdown(socket.SHUT_WR)
        linger = min(deadline, time.monotonic() + _LINGER_SECONDS)
        drained = 0
        while drained < _DRAIN_LIMIT and (remaining := linger - time.monotonic()) > 0:
            connection.settimeout(remaining)
            if not (chunk := connection.recv(65536)):
                break
            drained += len(chunk)
    except OSError:
        pass  # the peer lingered past the limit, or is gone
    return Rejected(f"calling AE title {calling_ae!r} refused")


def receive_associate_rq(
    connection: socket.socket, deadline: float, allowed: Callable[[str], bool]
) -> bytes:
    """The whole A-ASSOCIATE-RQ PDU read from ``connection`` by ``deadline`` (monotonic).

    ``allowed(calling_ae)`` is asked as soon as the calling AE title has arrived; a refused
    caller gets A-ASSOCIATE-RJ (1/1/3). Raises :class:`NotReceived` saying why otherwise.
    """
    pdu = bytearray()
    expected = PDU_HEADER_LENGTH
    checked = False
    while len(pdu) < expected:
        try:
            pdu += _recv(connection, min(65536, expected - len(pdu)), deadline)
        except NotReceived:
            if pdu:
                raise
            raise ClosedEmpty("connection closed without sending a PDU") from None
        if expected == PDU_HEADER_LENGTH and len(pdu) == PDU_HEADER_LENGTH:
            expected = _check_header(bytes(pdu))
        if not checked and len(pdu) >= _CALLING_AE.stop:
            calling_ae = pdu[_CALLING_AE].decode("ascii", "replace").strip()
            if not allowed(calling_ae):
                raise _reject(connection, calling_ae, deadline)
            checked = True
    return bytes(pdu)
