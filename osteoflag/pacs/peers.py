"""Who is at the other end of an association, as log fields: its calling AE title and
address, never anything from the data it sends."""

from __future__ import annotations

from pynetdicom.association import Association


def requestor_fields(assoc: Association) -> dict[str, str]:
    """``calling_ae`` and ``peer`` (address:port) of ``assoc``'s requestor, for a log line."""
    requestor = assoc.requestor
    return {
        "calling_ae": str(requestor.ae_title).strip(),
        "peer": f"{requestor.address}:{requestor.port}",
    }
