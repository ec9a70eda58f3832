"""A-ABORT, not a dead association thread, when a peer's DIMSE command set cannot be decoded.

pynetdicom decodes each DIMSE command set in its DUL thread, outside that thread's error
handling: a command set it cannot decode ends the thread with a bare traceback on stderr,
leaves the peer without an A-ABORT and its connection open, and (on our side as requestor)
leaves the caller waiting out the DIMSE timeout. :func:`check_commands` turns that into
A-ABORT and a log line, on the listener's associations and on the ones we request alike.

Relies on pynetdicom internals, checked against pynetdicom 3.0.4 (``pyproject.toml`` pins
``>=3.0.4,<3.1``): ``Association.dimse.receive_primitive`` is what its DUL hands each P-DATA
to, ``"Evt19"`` on ``DULServiceProvider.event_queue`` is its invalid-PDU event (PS3.8
9.2), and ``(None, None)`` on ``DIMSEServiceProvider.msg_queue`` is how its state machine
tells a waiting request that the association has ended.
``tests/integration/test_listener.py`` and ``tests/integration/test_scu_garbled.py`` exercise
both sides.
"""

from __future__ import annotations

import logging

from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.events import EVT_FSM_TRANSITION, Event
from pynetdicom.pdu_primitives import P_DATA

from osteoflag.pacs.peers import peer_fields

logger = logging.getLogger(__name__)


class CommandCheckingDIMSE(DIMSEServiceProvider):
    """A DIMSE provider whose peer is A-ABORTed when its message cannot be decoded."""

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Decode ``primitive`` as pynetdicom does; on failure log, then raise the state
        machine's invalid-PDU event: A-ABORT (source: service provider) and the end of the
        association, as for any other malformed PDU."""
        try:
            super().receive_primitive(primitive)
        except Exception as exc:  # pydicom and pynetdicom raise many kinds on a garbled set
            self.message = None
            logger.warning(
                "association aborted: DIMSE message not decodable: %s: %s",
                type(exc).__name__,
                exc,
                extra={"action": "abort", **peer_fields(self.assoc)},
            )
            self.dul.event_queue.put("Evt19")


def _wake_request(event: Event) -> None:
    """pynetdicom wakes a request waiting for its response when the peer aborts or the
    connection drops, but not when our own upper layer aborts on an invalid PDU (AA-8, after
    its A-P-ABORT indication is queued): without this the request waits out its DIMSE
    timeout."""
    if event.action == "AA-8":
        event.assoc.dimse.msg_queue.put((None, None))


def check_commands(assoc: Association) -> None:
    """Give ``assoc`` a :class:`CommandCheckingDIMSE`: before it starts (an acceptor), or once
    it is established and before its first request (a requestor), when no message is under
    way. A requestor's waiting request also ends as soon as our side aborts."""
    assoc.dimse = CommandCheckingDIMSE(assoc)
    if assoc.is_requestor:
        assoc.bind(EVT_FSM_TRANSITION, _wake_request)
