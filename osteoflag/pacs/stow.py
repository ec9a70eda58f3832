"""STOW-RS client (PS3.18 10.5): store one produced object on a DICOMweb server.

One instance per request, so each HTTP answer is that object's outcome, as a C-STORE
response is: 200 stored; 202 stored with warnings only when the Referenced SOP Sequence names
it (an unreadable 202 is retried); a Failed SOP Sequence item for it, with any status, carries
a Failure Reason (0008,1197), a C-STORE status that decides whether a retry can help
(PS3.18 Table 10.5.3-1). Transport errors, 401/403 (credentials
an operator can fix), 404, 408, 429 and 5xx are retried; 400, 413 and 415 are not.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from typing import Any, Final

import httpx

from osteoflag.destination_settings import DicomWebDestination
from osteoflag.errors import ConfigError
from osteoflag.pacs.status import is_permanent

_FAILED_SOP_SEQUENCE: Final = "00081198"
_STORED: Final = "00081199"  # Referenced SOP Sequence
_REFERENCED_SOP_INSTANCE_UID: Final = "00081155"
_FAILURE_REASON: Final = "00081197"
_PERMANENT_HTTP: Final = frozenset({400, 409, 413, 415})


@dataclass(frozen=True)
class StowOutcome:
    """What the server said about one object."""

    stored: bool
    permanent: bool
    detail: str
    answered: bool = True  # False: no HTTP answer at all (connection, TLS, timeout)


def stow_client(destination: DicomWebDestination, timeout: float) -> httpx.Client:
    """An HTTP client for ``destination``: its base URL, authentication and TLS trust."""
    verify: ssl.SSLContext | bool = True
    if destination.ca_certificates is not None:
        try:
            verify = ssl.create_default_context(cafile=str(destination.ca_certificates))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"destinations.ca_certificates {destination.ca_certificates}: {exc}"
            ) from exc
    auth = None
    if destination.username is not None and destination.password is not None:
        auth = httpx.BasicAuth(destination.username, destination.password)
    headers = {"Authorization": f"Bearer {destination.token}"} if destination.token else {}
    return httpx.Client(
        base_url=destination.url.rstrip("/"),
        auth=auth,
        headers=headers,
        verify=verify,
        timeout=timeout,
        follow_redirects=False,
    )


def multipart(dicom: bytes) -> tuple[bytes, str]:
    """``dicom`` as a one-part ``multipart/related; type="application/dicom"`` body."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            dicom,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def store_instance(client: httpx.Client, dicom: bytes, sop_instance_uid: str) -> StowOutcome:
    """POST one DICOM file to ``{url}/studies`` and read the answer for ``sop_instance_uid``."""
    body, content_type = multipart(dicom)
    try:
        response = client.post(
            "/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
    except httpx.HTTPError as exc:
        return StowOutcome(False, False, f"no answer from {client.base_url}: {exc}", False)
    return interpret(response.status_code, _json(response), sop_instance_uid)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def interpret(status: int, payload: Any, sop_instance_uid: str) -> StowOutcome:
    """The outcome of one STOW-RS answer (HTTP status and Store Instances Response).

    A Failed SOP Sequence item for the instance decides, whatever the status. A 202 means
    stored with warnings or not stored (PS3.18 10.5.3), so it counts as stored only when the
    Referenced SOP Sequence names the instance; an answer that does not say (another
    format, no body) is retried rather than taken for a delivery.
    """
    response = _response(payload)
    reason = failure_reason(response, sop_instance_uid)
    if reason is not None:
        return StowOutcome(False, is_permanent(reason), f"HTTP {status}, failure 0x{reason:04X}")
    if status == 200:
        return StowOutcome(True, False, f"HTTP {status}")
    if status == 202:
        if _stored(response, sop_instance_uid):
            return StowOutcome(True, False, f"HTTP {status}")
        return StowOutcome(False, False, f"HTTP {status} without the instance as stored")
    return StowOutcome(False, status in _PERMANENT_HTTP, f"HTTP {status}")


def _response(payload: Any) -> Any:
    """The Store Instances Response data set: the DICOM JSON model may also give it as the
    one element of an array (PS3.18 F.2)."""
    if isinstance(payload, list) and len(payload) == 1:
        return payload[0]
    return payload


def _items(response: Any, sequence: str) -> list[Any]:
    element = response.get(sequence) if isinstance(response, dict) else None
    items = element.get("Value", []) if isinstance(element, dict) else []
    return items if isinstance(items, list) else []


def _stored(response: Any, sop_instance_uid: str) -> bool:
    """Whether the Referenced SOP Sequence (0008,1199) names ``sop_instance_uid``."""
    named = (_value(item, _REFERENCED_SOP_INSTANCE_UID) for item in _items(response, _STORED))
    return sop_instance_uid in named


def failure_reason(payload: Any, sop_instance_uid: str) -> int | None:
    """Failure Reason (0008,1197) the response gives for ``sop_instance_uid``, if any.

    A failed item that names no instance counts: the request held only ours.
    """
    for item in _items(payload, _FAILED_SOP_SEQUENCE):
        named = _value(item, _REFERENCED_SOP_INSTANCE_UID)
        if named in (None, sop_instance_uid):
            reason = _value(item, _FAILURE_REASON)
            return int(reason) if isinstance(reason, int) else 0xC000
    return None


def _value(item: Any, tag: str) -> Any:
    element = item.get(tag) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None
