"""Who may associate: the calling AE title allowlist and peer-address pinning.

``listener.allowed_calling_aets`` lists the calling AE titles accepted (empty: any). An AE
title is easy to spoof, so ``listener.allowed_peers`` additionally binds chosen titles to IP
addresses or networks. Both are checked as soon as the calling AE title of the A-ASSOCIATE-RQ
has arrived (see :mod:`osteoflag.pacs.reception`); a refused caller gets A-ASSOCIATE-RJ,
permanent, "calling AE title not recognised" (PS3.8 9.3.4).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from osteoflag.config import AllowedPeer

logger = logging.getLogger(__name__)


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


class CallerPolicy:
    """The allowlist and the pins of one listener; logs each refusal once."""

    def __init__(self, allowed_calling_aets: Sequence[str], pins: Sequence[AllowedPeer]) -> None:
        self._titles = frozenset(title.strip() for title in allowed_calling_aets)
        self._pins = tuple(pins)

    def allows(self, calling_ae: str, address: str) -> bool:
        """True when ``calling_ae`` may associate from ``address``."""
        if self._titles and calling_ae not in self._titles:
            reason = "calling AE title not allowed"
        elif not peer_allowed(self._pins, calling_ae, address):
            reason = "calling AE title not allowed from this address"
        else:
            return True
        logger.warning(
            "association rejected: %s",
            reason,
            extra={"action": "reject", "calling_ae": calling_ae[:16], "peer": address},
        )
        return False
