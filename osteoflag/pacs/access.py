"""Peer-address pinning: a calling AE title may be bound to the addresses it calls from.

pynetdicom checks the calling AE title against ``require_calling_aet`` itself; an AE title
is easy to spoof, so ``listener.allowed_peers`` additionally binds chosen titles to IP
addresses or networks. The check runs on ``EVT_REQUESTED`` (the A-ASSOCIATE-RQ has
arrived, nothing is negotiated yet) and refuses with an A-ASSOCIATE-RJ, permanent,
"calling AE title not recognised" (PS3.8 9.3.4), the same answer as the allowlist gives.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from pynetdicom.events import Event

from osteoflag.config import AllowedPeer

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-permanent, DICOM UL service-user, calling AE title not recognised.
_REJECT = (0x01, 0x01, 0x03)


def peer_allowed(pins: Sequence[AllowedPeer], calling_ae: str, address: str) -> bool:
    """True unless ``calling_ae`` is pinned and ``address`` is in none of its networks."""
    networks = [pin.network for pin in pins if pin.ae_title == calling_ae]
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class PeerPinning:
    """``EVT_REQUESTED`` handler that rejects a pinned AE title calling from elsewhere."""

    def __init__(self, pins: Sequence[AllowedPeer]) -> None:
        self._pins = tuple(pins)

    def __call__(self, event: Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling_ae = str(primitive.calling_ae_title if primitive is not None else "").strip()
        address = str(assoc.requestor.address)
        if peer_allowed(self._pins, calling_ae, address):
            return
        logger.warning(
            "association rejected: calling AE title not allowed from this address",
            extra={"action": "reject", "calling_ae": calling_ae, "peer": address},
        )
        assoc.acse.send_reject(*_REJECT)
        assoc.kill()
