"""Upper-layer PDUs (PS3.8 9.3) built and read byte by byte, for tests that check the wire.

A refusal is read off the wire rather than from pynetdicom's requestor: when the
A-ASSOCIATE-RJ and the close that follows it arrive before the requesting thread has looked at
its socket, pynetdicom reports an abort and keeps no A-ASSOCIATE primitive.
"""

from __future__ import annotations

import socket
import struct
import threading

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from osteoflag.pacs.contexts import VERIFICATION

ASSOCIATE_RJ_LENGTH = 10


def associate_rq(called: bytes, calling: bytes) -> bytes:
    """A minimal A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification."""

    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    context = item(
        0x20,
        bytes([1, 0, 0, 0])
        + item(0x30, VERIFICATION.encode())
        + item(0x40, ExplicitVRLittleEndian.encode()),
    )
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16)
        + calling.ljust(16)
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4) with this result, source and reason/diag."""
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


def a_abort(source: int, reason: int) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8) with this source and reason/diag."""
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, source, reason)


def first_reply(port: int, calling: bytes, source: str = "127.0.0.1") -> bytes:
    """The first 10 bytes the listener sends back to an A-ASSOCIATE-RQ from ``source``:
    a whole A-ASSOCIATE-RJ, or the start of an A-ASSOCIATE-AC."""
    address = ("127.0.0.1", port)
    with socket.create_connection(address, timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(associate_rq(b"OSTEOFLAG", calling))
        return sock.recv(ASSOCIATE_RJ_LENGTH, socket.MSG_WAITALL)


def closed_by_peer(sock: socket.socket) -> bytes:
    """Read until the listener closes the connection; return all it sent."""
    sock.settimeout(15)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def associate_ac(context_id: int, transfer_syntax: str) -> bytes:
    """An A-ASSOCIATE-AC (PS3.8 9.3.3) accepting one presentation context."""

    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    context = item(0x21, bytes([context_id, 0, 0, 0]) + item(0x40, transfer_syntax.encode()))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = (
        struct.pack(">HH", 1, 0)
        + b"PEER".ljust(16)
        + b"OSTEOFLAG".ljust(16)
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU from ``sock`` (empty when the peer has closed)."""
    header = sock.recv(6, socket.MSG_WAITALL)
    if len(header) < 6:
        return b""
    (length,) = struct.unpack(">I", header[2:])
    return header + sock.recv(length, socket.MSG_WAITALL)


# A P-DATA-TF whose one PDV is a last command fragment that decodes to no Command Field.
GARBLED_COMMAND = struct.pack(">BBI", 0x04, 0, 12) + b"\x00\x00\x00\x08\x01\x03" + b"\xff" * 6


class GarblingPeer:
    """Accepts one association (presentation context 1 in ``transfer_syntax``), answers its
    first P-DATA with :data:`GARBLED_COMMAND`, and keeps what came after it."""

    def __init__(self, transfer_syntax: str = ImplicitVRLittleEndian) -> None:
        self.transfer_syntax = transfer_syntax
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.request = b""
        self.after_reply = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.server.accept()
        with connection:
            read_pdu(connection)  # A-ASSOCIATE-RQ
            connection.sendall(associate_ac(1, self.transfer_syntax))
            self.request = read_pdu(connection)
            connection.sendall(GARBLED_COMMAND)
            self.after_reply = closed_by_peer(connection)
        self.server.close()
