"""Who is at the other end of an association, as log fields: its AE title and address, never
anything from the data it sends."""

from __future__ import annotations

from pynetdicom.association import Association, ServiceUser


def _fields(user: ServiceUser, title: str) -> dict[str, str]:
    return {title: str(user.ae_title).strip(), "peer": f"{user.address}:{user.port}"}


def requestor_fields(assoc: Association) -> dict[str, str]:
    """``calling_ae`` and ``peer`` (address:port) of ``assoc``'s requestor, for a log line."""
    return _fields(assoc.requestor, "calling_ae")


def peer_fields(assoc: Association) -> dict[str, str]:
    """The other end of ``assoc``: its requestor's fields when we accepted it, else
    ``called_ae`` and ``peer`` of the acceptor we asked."""
    if assoc.is_requestor:
        return _fields(assoc.acceptor, "called_ae")
    return requestor_fields(assoc)
