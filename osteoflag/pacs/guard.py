"""Bound the size of a data set while it arrives, before pynetdicom has all of it in memory.

pynetdicom assembles each DIMSE message in memory from its P-DATA-TF fragments and only then
calls the C-STORE handler, so the handler cannot refuse a data set for being too large: a
peer sending gigabytes would have the daemon hold them. This ``EVT_PDU_RECV`` handler counts
the data set fragments of the message in progress (PS3.8 9.3.5.1, message control header:
bit 0 command/data set, bit 1 last fragment) and aborts the association once they exceed
the limit, so memory stays bounded by the limit per association.
"""

from __future__ import annotations

import logging
import threading
import weakref

from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF

from osteoflag.pacs.peers import requestor_fields

logger = logging.getLogger(__name__)

_COMMAND = 0x01
_LAST = 0x02


class DatasetSizeGuard:
    """``EVT_PDU_RECV`` handler: A-ABORT an association whose data set grows beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._received: weakref.WeakKeyDictionary[Association, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        pdu = getattr(event, "pdu", None)
        if not isinstance(pdu, P_DATA_TF):
            return
        assoc = event.assoc
        with self._lock:
            size = self._received.get(assoc, 0)
            if size < 0:
                return  # already aborted
            for item in pdu.presentation_data_value_items:
                value = item.presentation_data_value or b""
                if not value or value[0] & _COMMAND:
                    continue
                size += len(value) - 1
                if size > self._limit:
                    self._received[assoc] = -1
                    break
                if value[0] & _LAST:
                    size = 0
            else:
                self._received[assoc] = size
                return
        logger.warning(
            "association aborted: data set larger than %d bytes",
            self._limit,
            extra={"action": "abort", **requestor_fields(assoc)},
        )
        assoc.abort()
