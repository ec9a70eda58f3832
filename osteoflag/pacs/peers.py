"""Who is at the other end of an association, as log fields: its AE title and address, never
anything from the data it sends."""

from __future__ import annotations

from pynetdicom.association import Association


def requestor_fields(assoc: Association) -> dict[str, str]:
    """``calling_ae`` and ``peer`` (address:port) of ``assoc``'s requestor, for a log line."""
    requestor = assoc.requestor
    return {
        "calling_ae": str(requestor.ae_title).strip(),
        "peer": f"{requestor.address}:{requestor.port}",
    }


def peer_fields(assoc: Association) -> dict[str, str]:
    """The other end of ``assoc``: its requestor's fields when we accepted it, else
    ``called_ae`` and ``peer`` of the acceptor we asked."""
    if not assoc.is_requestor:
        return requestor_fields(assoc)
    acceptor = assoc.acceptor
    return {
        "called_ae": str(acceptor.ae_title).strip(),
        "peer": f"{acceptor.address}:{acceptor.port}",
    }
