"""Our side as requestor (``echo``, ``send``, the sender): a peer that answers with a DIMSE
command set that cannot be decoded gets A-ABORT and a closed connection, and the call fails
with a DeliveryError as soon as we abort, instead of leaving a dead association thread and an
open socket and waiting out the DIMSE timeout.

The peer is a raw socket speaking the upper layer byte by byte (``tests/helpers/ul.py``,
``GarblingPeer``): no DICOM library sends a garbled command set on purpose.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian

from osteoflag.errors import DeliveryError
from osteoflag.pacs.scu import Peer, StoreOutcome, send_c_echo, send_c_store
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.helpers.ul import GarblingPeer, a_abort


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


@pytest.mark.timeout(60)
def test_a_garbled_store_response_fails_the_object_and_ends_the_association(
    tmp_path: Path,
) -> None:
    # The sender's path: the object gets no status (so it waits for its retry) and the next
    # one is not sent on the aborted association; neither waits out the 600 s timeout.
    files = [
        write_in_syntax(radiograph(seed=i), ImplicitVRLittleEndian, tmp_path / f"{i}.dcm")
        for i in range(2)
    ]
    peer = GarblingPeer()
    outcomes = send_c_store(files, Peer("127.0.0.1", peer.port, "PEER"), "OSTEOFLAG", 600.0)
    assert outcomes == [
        StoreOutcome(files[0], None, "no response (association aborted?)"),
        StoreOutcome(files[1], None, "not sent: association ended"),
    ]
    peer.thread.join(timeout=30)
    assert not peer.thread.is_alive()
    # Whatever was left of the data set's P-DATA, then A-ABORT (service provider) and close.
    assert peer.after_reply.endswith(a_abort(2, 0))
