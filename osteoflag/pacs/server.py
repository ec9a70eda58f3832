"""The association server: reception first (:mod:`~osteoflag.pacs.reception`), then pynetdicom,
with every later PDU's announced length checked before it is read.

pynetdicom's DUL reads a PDU's 6-byte header, then reads the announced length, whatever it is,
into memory. :class:`BoundedAssociationSocket` checks each header as it is read: a P-DATA-TF
longer than the Maximum Length we announced in the A-ASSOCIATE-AC (``listener.maximum_pdu_size``,
PS3.8 D.1), or any other PDU longer than an A-ASSOCIATE-RQ may be, gets A-ABORT and the
connection is closed before its body is read.

Each association also gets :func:`~osteoflag.pacs.dimse_check.check_commands`: a DIMSE
command set that cannot be decoded gets A-ABORT and a log line.

This module and :mod:`~osteoflag.pacs.dimse_check` are the two that rely on pynetdicom
internals, checked against pynetdicom 3.0.4 (``pyproject.toml`` pins ``>=3.0.4,<3.1``):
``RequestHandler._create_association`` builds the Association around an ``AssociationSocket``;
``Association.dul.socket`` is what its DUL reads through, by ``AssociationSocket.ready`` and
``AssociationSocket.recv``; ``AE._servers`` lists the servers ``AE.shutdown`` stops. The
listener's integration tests (``tests/integration/test_network_limits.py``,
``tests/integration/test_listener.py``) exercise every part of it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from osteoflag.errors import ConfigError
from osteoflag.pacs.access import CallerPolicy
from osteoflag.pacs.dimse_check import check_commands
from osteoflag.pacs.peers import requestor_fields
from osteoflag.pacs.reception import (
    MAX_ASSOCIATE_RQ_LENGTH,
    PDU_HEADER_LENGTH,
    ClosedEmpty,
    NotReceived,
    PendingConnections,
    Rejected,
    receive_associate_rq,
)

logger = logging.getLogger(__name__)

P_DATA_TF = 0x04
# A-ABORT: source DICOM UL service-provider, reason invalid-PDU-parameter value (PS3.8 9.3.8).
_ABORT_INVALID_PARAMETER = struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x06)


class BoundedAssociationSocket(AssociationSocket):
    """Replays the A-ASSOCIATE-RQ reception already read, then refuses over-long PDUs."""

    _replay: bytearray
    _header: bytearray
    _body_left: int
    _max_p_data: int
    _aborted: bool

    @classmethod
    def take_over(
        cls, plain: AssociationSocket, associate_rq: bytes, max_p_data: int
    ) -> BoundedAssociationSocket:
        """This class in place of ``plain``, the socket pynetdicom built for the connection.

        Constructing a new one would announce the transport connection (Evt5) to the state
        machine a second time, so the new object takes over the state of ``plain`` instead.
        """
        bounded = cls.__new__(cls)
        vars(bounded).update(vars(plain))
        bounded._replay = bytearray(associate_rq)
        bounded._header = bytearray()
        bounded._body_left = 0
        bounded._max_p_data = max_p_data
        bounded._aborted = False
        return bounded

    @property
    def ready(self) -> bool:
        """Data to read: the replayed request, or bytes on the socket."""
        return bool(self._replay) or bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer if the peer closes), checking each PDU header on the way."""
        received = bytearray()
        while len(received) < nr_bytes and not self._aborted:
            in_header = self._body_left == 0
            wanted = nr_bytes - len(received)
            if in_header:
                wanted = min(wanted, PDU_HEADER_LENGTH - len(self._header))
            else:
                wanted = min(wanted, self._body_left)
            chunk = self._read(wanted)
            if not chunk:
                break
            received += chunk
            if not in_header:
                self._body_left -= len(chunk)
                continue
            self._header += chunk
            if len(self._header) == PDU_HEADER_LENGTH:
                kind, _, length = struct.unpack(">BBI", self._header)
                self._header.clear()
                if length > self._limit(kind):
                    self._abort(kind, length)
                    return bytearray()
                self._body_left = length
        return received

    def _limit(self, kind: int) -> int:
        return self._max_p_data if kind == P_DATA_TF else MAX_ASSOCIATE_RQ_LENGTH

    def _read(self, size: int) -> bytes:
        if self._replay:
            chunk = bytes(self._replay[:size])
            del self._replay[:size]
            return chunk
        return bytes(super().recv(size))

    def _abort(self, kind: int, length: int) -> None:
        """A-ABORT and close: the DUL then sees the connection end (Evt17), as on a reset."""
        self._aborted = True
        logger.warning(
            "association aborted: PDU type 0x%02X announces %d bytes, more than %d",
            kind,
            length,
            self._limit(kind),
            extra={"action": "abort", **requestor_fields(self.assoc)},
        )
        raw = self.socket
        if raw is None:
            return
        try:
            raw.sendall(_ABORT_INVALID_PARAMETER)
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer is gone already


class BoundedRequestHandler(RequestHandler):
    """pynetdicom's handler, given the request reception read and a bounded socket."""

    server: GuardedAssociationServer

    def __init__(
        self, request: socket.socket, client_address: Any, server: Any, associate_rq: bytes
    ) -> None:
        self._associate_rq = associate_rq
        super().__init__(request, client_address, server)

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        plain = cast(AssociationSocket, assoc.dul.socket)
        assoc.dul.socket = BoundedAssociationSocket.take_over(
            plain, self._associate_rq, self.ae.maximum_pdu_size
        )
        check_commands(assoc)
        return assoc


class GuardedAssociationServer(ThreadedAssociationServer):
    """An association server whose connections go through reception first (plain or TLS).

    The TLS handshake, too, runs in the connection's own thread within the reception deadline:
    pynetdicom's server would handshake in its one accept thread with no timeout, so a silent
    peer would stop every other connection from being accepted.
    """

    def __init__(
        self,
        *args: Any,
        callers: CallerPolicy,
        max_pending: int,
        **kwargs: Any,
    ) -> None:
        self._callers = callers
        self._pending = PendingConnections(max_pending)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, and wrap in TLS without handshaking (that happens in :meth:`finish_request`)."""
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Count the connection as pending (the oldest may give way), then serve it in a thread."""
        self._pending.admit(request)
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Receive the A-ASSOCIATE-RQ within ``acse_timeout``, then hand over to pynetdicom."""
        address = str(client_address[0])
        deadline = time.monotonic() + float(self.ae.acse_timeout or 0)
        try:
            if isinstance(request, ssl.SSLSocket):
                _handshake(request, deadline)
            associate_rq = receive_associate_rq(
                request, deadline, lambda calling_ae: self._callers.allows(calling_ae, address)
            )
            if not self._pending.release(request):
                raise NotReceived("evicted")
        except NotReceived as exc:
            evicted = not self._pending.release(request)
            if not isinstance(exc, Rejected):
                reason = (
                    "connection closed for a newer one: max_pending_associations reached"
                    if evicted
                    else str(exc)
                )
                logger.log(
                    logging.INFO if isinstance(exc, ClosedEmpty) else logging.WARNING,
                    "%s",
                    reason,
                    extra={"action": "drop", "peer": f"{address}:{client_address[1]}"},
                )
            self.shutdown_request(request)
            return
        request.settimeout(None)
        BoundedRequestHandler(request, client_address, self, associate_rq)

    def server_close(self) -> None:
        """Close pending connections first, so their threads end now, then the server."""
        self._pending.close_all()
        super().server_close()


def _handshake(connection: ssl.SSLSocket, deadline: float) -> None:
    connection.settimeout(max(0.0, deadline - time.monotonic()))
    try:
        connection.do_handshake()
    except OSError as exc:  # ssl.SSLError, a timeout or a reset peer
        raise NotReceived(f"TLS handshake failed: {exc}") from exc


def start_server(
    ae: AE,
    address: tuple[str, int],
    handlers: list[EventHandlerType],
    callers: CallerPolicy,
    max_pending: int,
    ssl_context: ssl.SSLContext | None = None,
) -> GuardedAssociationServer:
    """Like ``AE.start_server(block=False)``, with a :class:`GuardedAssociationServer`.

    A port that cannot be bound (in use, not ours) is a configuration error.
    """
    try:
        server = cast(
            GuardedAssociationServer,
            ae.make_server(
                address,
                ssl_context=ssl_context,
                evt_handlers=handlers,
                server_class=GuardedAssociationServer,
                callers=callers,
                max_pending=max_pending,
            ),
        )
    except OSError as exc:
        host, port = address
        raise ConfigError(f"listener: cannot listen on {host}:{port}: {exc.strerror}") from exc
    name = "osteoflag-tls" if ssl_context is not None else "osteoflag-listener"
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    # As start_server does: the AE tracks its servers, and server.shutdown() untracks it.
    ae._servers.append(server)
    return server
