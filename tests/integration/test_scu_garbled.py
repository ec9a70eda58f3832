"""Our side as requestor (``echo``, ``send``, the sender): a peer that answers with a DIMSE
command set that cannot be decoded gets A-ABORT and a closed connection, and the call fails
with a DeliveryError as soon as we abort, instead of leaving a dead association thread and an
open socket and waiting out the DIMSE timeout.

The peer is a raw socket speaking the upper layer byte by byte (``tests/helpers/ul.py``):
no DICOM library sends a garbled command set on purpose.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

import pytest
from pydicom.uid import ImplicitVRLittleEndian

from osteoflag.errors import DeliveryError
from osteoflag.pacs.scu import Peer, send_c_echo
from tests.helpers.ul import a_abort, associate_ac, closed_by_peer, read_pdu

# A P-DATA-TF whose one PDV is a last command fragment that decodes to no Command Field.
GARBLED_COMMAND = struct.pack(">BBI", 0x04, 0, 12) + b"\x00\x00\x00\x08\x01\x03" + b"\xff" * 6


class GarblingPeer:
    """Accepts one association (presentation context 1, Implicit VR Little Endian), answers
    its first P-DATA with :data:`GARBLED_COMMAND`, and keeps what came after it."""

    def __init__(self) -> None:
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
            connection.sendall(associate_ac(1, ImplicitVRLittleEndian))
            self.request = read_pdu(connection)
            connection.sendall(GARBLED_COMMAND)
            self.after_reply = closed_by_peer(connection)
        self.server.close()


# The call's timeouts are ten times the test's own: only our abort can end the wait in time.
@pytest.mark.timeout(60)
def test_a_garbled_response_gets_a_abort_and_a_delivery_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = GarblingPeer()
    with (
        caplog.at_level(logging.WARNING, logger="osteoflag.pacs.dimse_check"),
        pytest.raises(DeliveryError, match=r"no C-ECHO response from PEER@127\.0\.0\.1"),
    ):
        send_c_echo(Peer("127.0.0.1", peer.port, "PEER"), "OSTEOFLAG", timeout=600.0)
    peer.thread.join(timeout=30)
    assert not peer.thread.is_alive()
    assert peer.request[0] == 0x04  # the C-ECHO-RQ went out as P-DATA-TF
    # A-ABORT, source service provider (the upper layer's answer to an invalid PDU), then close.
    assert peer.after_reply == a_abort(2, 0)
    (record,) = [r for r in caplog.records if r.name == "osteoflag.pacs.dimse_check"]
    assert record.getMessage().startswith("association aborted: DIMSE message not decodable")
    assert record.called_ae == "PEER"
    assert record.peer == f"127.0.0.1:{peer.port}"
