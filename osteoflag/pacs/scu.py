"""Storage and Verification SCU: ``osteoflag echo`` and ``osteoflag send``.

One association per call, proposing each file's own SOP Class and Transfer Syntax
(and Explicit/Implicit VR Little Endian for uncompressed data) so the peer can accept
what it can decode.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import PresentationContext

from osteoflag.destination_settings import DestinationTLS
from osteoflag.errors import ContextsRefused, DeliveryError, PermanentError
from osteoflag.pacs.contexts import VERIFICATION
from osteoflag.pacs.dimse_check import check_commands
from osteoflag.pacs.status import is_success
from osteoflag.pacs.tls import client_context

logger = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Peer:
    """A remote Application Entity."""

    host: str
    port: int
    ae_title: str
    tls: DestinationTLS | None = None  # DICOM TLS, verifying the peer against its CA


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one file sent with C-STORE."""

    path: Path
    status: int | None
    error: str | None = None
    #: False when the file was never offered: it is not a DICOM file that can be read.
    readable: bool = True

    @property
    def ok(self) -> bool:
        """True for Success and Warning statuses (PS3.4 B.2.3)."""
        return self.status is not None and is_success(self.status)


def client_ae(calling_ae: str, timeout: float) -> AE:
    """An AE for one outgoing association: connection, ACSE, DIMSE and network timeouts
    all ``timeout`` seconds (the sender and the ``echo``/``send`` commands alike)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def associate(ae: AE, peer: Peer) -> Association:
    """Associate with ``peer`` (over TLS when it has TLS settings); DeliveryError if refused
    (saying why, so an operator can fix the AE titles) or unreachable."""
    context = None if peer.tls is None else client_context(peer.tls)
    tls_args = None if context is None else (context, peer.host)
    # The A-ASSOCIATE-RJ is taken as its PDU arrives: pynetdicom's requestor reports a
    # rejection that has already closed the connection as an abort, with no reason.
    rejections: list[A_ASSOCIATE_RJ] = []
    handler = (evt.EVT_PDU_RECV, _keep_rejection, [rejections])
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    try:
        assoc = ae.associate(
            peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args, evt_handlers=[handler]
        )
    except socket.gaierror as exc:  # a host name that does not resolve: pynetdicom raises
        raise DeliveryError(
            f"association with {where}: {peer.host!r} cannot be resolved: {exc}"
        ) from exc
    assoc.unbind(evt.EVT_PDU_RECV, _keep_rejection)
    if not assoc.is_established and context is not None and context.failure is not None:
        raise DeliveryError(f"association with {where}: TLS failed: {context.failure}")
    if rejections:
        raise DeliveryError(f"association with {where} rejected: {_reason(rejections[0])}")
    if not assoc.is_established and assoc.rejected_contexts and not assoc.accepted_contexts:
        raise _contexts_refused(where, assoc.rejected_contexts)
    if not assoc.is_established:
        raise DeliveryError(
            f"association with {where} was not established (unreachable, aborted or timed out)"
        )
    check_commands(assoc)  # a response that cannot be decoded: A-ABORT, not a dead thread
    return assoc


#: Presentation context results that mean "not supported" (PS3.8 Table 9-18), not a refusal
#: for now (1, user rejection; 2, no reason given).
_UNSUPPORTED = frozenset({0x03, 0x04})


def _contexts_refused(where: str, refused: list[PresentationContext]) -> ContextsRefused:
    """The error of an association ``where`` accepted with none of the ``refused`` contexts
    (pynetdicom then aborts it): which SOP classes, and why, rather than "not established"."""
    why = sorted(
        {f"{UID(context.abstract_syntax or '').name}: {context.status}" for context in refused}
    )
    return ContextsRefused(
        f"{where} accepted the association but no presentation context ({'; '.join(why)})",
        permanent=all(context.result in _UNSUPPORTED for context in refused),
    )


def usable(assoc: Association) -> bool:
    """Whether more requests may go out on ``assoc``: established, and no abort waiting.
    A request that ends without a response was aborted (by either side) or timed out, and
    pynetdicom marks the association ended only once its own thread resumes; the abort's
    indication is queued before the request returns, so this sees it at once."""
    return bool(assoc.is_established and not assoc.acse.is_aborted())


def _keep_rejection(event: evt.Event, rejections: list[A_ASSOCIATE_RJ]) -> None:
    if isinstance(event.pdu, A_ASSOCIATE_RJ):
        rejections.append(event.pdu)


def _reason(pdu: A_ASSOCIATE_RJ) -> str:
    """Result, source and reason of an A-ASSOCIATE-RJ (PS3.8 9.3.4), in words when valid."""
    numbers = f"result {pdu.result}, source {pdu.source}, reason {pdu.reason_diagnostic}"
    try:
        return f"{pdu.result_str}, {pdu.source_str}: {pdu.reason_str} ({numbers})"
    except ValueError:  # values outside PS3.8 Table 9-21
        return numbers


def send_c_echo(peer: Peer, calling_ae: str, timeout: float = 30.0) -> int:
    """C-ECHO ``peer``; return its status, raise DeliveryError if no association."""
    ae = client_ae(calling_ae, timeout)
    ae.add_requested_context(VERIFICATION)
    assoc = associate(ae, peer)
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in response:
        raise DeliveryError(f"no C-ECHO response from {peer.ae_title}@{peer.host}:{peer.port}")
    return int(response.Status)


def _header(path: Path) -> tuple[str, str]:
    """SOP Class and Transfer Syntax of a file (PS3.10 7.1), read from its header only."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        sop_class_uid = str(ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID)
        return sop_class_uid, str(ds.file_meta.TransferSyntaxUID)
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError) as exc:
        raise PermanentError(f"{path}: not a readable DICOM file ({exc})") from exc


def send_c_store(
    paths: list[Path], peer: Peer, calling_ae: str, timeout: float = 30.0
) -> list[StoreOutcome]:
    """C-STORE every file in ``paths`` over one association; one outcome per path, in order.

    Each file's own transfer syntax gets its own presentation context, so the peer
    receives it unchanged when it accepts that syntax. A file that is not readable DICOM (a
    README in an export folder) is never offered: its outcome says why, and the rest go.
    """
    unreadable: dict[int, StoreOutcome] = {}
    contexts: set[tuple[str, str]] = set()
    sendable: list[Path] = []
    for index, path in enumerate(paths):
        try:
            contexts.add(_header(path))
        except PermanentError as exc:
            unreadable[index] = StoreOutcome(path, None, str(exc), readable=False)
            continue
        sendable.append(path)
    sent = iter(_store(sendable, sorted(contexts), peer, calling_ae, timeout) if sendable else [])
    return [unreadable[i] if i in unreadable else next(sent) for i in range(len(paths))]


def _store(
    paths: list[Path],
    contexts: list[tuple[str, str]],
    peer: Peer,
    calling_ae: str,
    timeout: float,
) -> list[StoreOutcome]:
    """The readable ``paths`` over one association proposing ``contexts`` (PS3.4 B.2)."""
    ae = client_ae(calling_ae, timeout)
    requested: set[tuple[str, str]] = set()
    for sop_class_uid, transfer_syntax in contexts:
        fallbacks = UNCOMPRESSED if transfer_syntax in UNCOMPRESSED else ()
        for syntax in (transfer_syntax, *fallbacks):
            if (sop_class_uid, syntax) not in requested:
                requested.add((sop_class_uid, syntax))
                ae.add_requested_context(sop_class_uid, syntax)
    outcomes: list[StoreOutcome] = []
    assoc = associate(ae, peer)
    try:
        for path in paths:
            try:
                response = assoc.send_c_store(path)
            except (ValueError, RuntimeError, OSError) as exc:
                outcomes.append(StoreOutcome(path, None, str(exc)))
                continue
            code = int(response.Status) if "Status" in response else None
            error = None if code is not None else "no response (association aborted?)"
            outcomes.append(StoreOutcome(path, code, error))
            if not usable(assoc):
                break
    finally:
        if usable(assoc):
            assoc.release()
    outcomes.extend(
        StoreOutcome(p, None, "not sent: association ended") for p in paths[len(outcomes) :]
    )
    return outcomes
