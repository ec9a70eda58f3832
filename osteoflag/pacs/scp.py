"""The Storage SCP and Verification SCP (PS3.4 Annex B and A).

The C-STORE handler does one thing: put the encoded dataset on disk durably, commit
its queue row, and only then answer Success. Any failure in between answers a
failure status so the sender keeps the instance and retries; nothing slow (no pixel
decoding) happens here.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db import queue
from osteoflag.errors import PermanentError
from osteoflag.pacs import status
from osteoflag.pacs.access import CallerPolicy
from osteoflag.pacs.contexts import ACCEPTED_TRANSFER_SYNTAXES, RADIOGRAPH_STORAGE, VERIFICATION
from osteoflag.pacs.guard import DatasetSizeGuard
from osteoflag.pacs.identity import HEAD_BYTES, Mismatch, read_head
from osteoflag.pacs.peers import requestor_fields
from osteoflag.pacs.server import GuardedAssociationServer, start_server
from osteoflag.pacs.storage import (
    check_uid,
    conflict_path,
    data_set_digest,
    free_bytes,
    instance_path,
    stored_data_set_digest,
    write_atomically,
)
from osteoflag.pacs.tls import server_context

logger = logging.getLogger(__name__)

#: What the worker writes for an instance (SR and summary image), as a multiple of the
#: instance's own size: ~1.7 for radiographs, rounded up.
WORKER_OUTPUT_RATIO = 2

_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _failure(code: int, refusal: Mismatch) -> Dataset:
    """A C-STORE failure status naming the offending attribute (PS3.7 C.4.2)."""
    response = Dataset()
    response.Status = code
    response.ErrorComment = refusal.comment
    response.OffendingElement = [refusal.tag]
    return response


def _received(event: Event) -> memoryview:
    """The C-STORE's data set as the peer encoded it (no File Meta Information), without
    copying it: a radiograph is tens of megabytes, hashed in the handler."""
    return cast(BytesIO, cast(C_STORE, event.request).DataSet).getbuffer()


def _peer(event: Event) -> tuple[str, str]:
    fields = requestor_fields(event.assoc)
    return fields["calling_ae"], fields["peer"]


class StorageSCP:
    """Accepts radiographs into the queue; ``on_queued`` wakes the worker after each one."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._on_queued = on_queued
        self._servers: list[GuardedAssociationServer] = []
        self._min_free = settings.storage.min_free_mb * 1024 * 1024

    def make_ae(self) -> AE:
        """An AE with our contexts, limits and timeouts (see docs/conformance.md)."""
        listener = self._settings.listener
        ae = AE(ae_title=listener.ae_title)
        for sop_class_uid in RADIOGRAPH_STORAGE:
            ae.add_supported_context(sop_class_uid, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.maximum_associations = listener.max_associations
        ae.acse_timeout = listener.acse_timeout
        ae.dimse_timeout = listener.dimse_timeout
        ae.network_timeout = listener.network_timeout
        ae.maximum_pdu_size = listener.maximum_pdu_size
        return ae

    def start(self) -> None:
        """Listen in background threads: plain, TLS only, or both (``listener.tls``)."""
        listener = self._settings.listener
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_REJECTED, self._log_rejected),
            (evt.EVT_PDU_RECV, DatasetSizeGuard(listener.max_dataset_mb * 1024 * 1024)),
        ]
        ae = self.make_ae()
        callers = CallerPolicy(listener.allowed_calling_aets, listener.allowed_peers)
        max_pending = listener.max_pending_associations
        tls = listener.tls
        if tls is None or not tls.required:
            address = (listener.host, listener.port)
            self._servers.append(start_server(ae, address, handlers, callers, max_pending))
        if tls is not None:
            # TLS beside plain DICOM has its own port; TLS only takes listener.port.
            address = (listener.host, tls.port if tls.port is not None else listener.port)
            context = server_context(tls)
            self._servers.append(start_server(ae, address, handlers, callers, max_pending, context))
        logger.info(
            "listening",
            extra={
                "action": "listen",
                "ae_title": listener.ae_title,
                "port": self.port,
                "tls": "off" if tls is None else "required" if tls.required else "optional",
            },
        )

    @property
    def port(self) -> int:
        """The bound ``listener.port`` (useful when the config asked for port 0)."""
        if not self._servers:
            return self._settings.listener.port
        return int(self._servers[0].server_address[1])

    @property
    def running(self) -> bool:
        """True while the association server is listening (``/healthz``)."""
        return bool(self._servers)

    def stop(self, timeout: float) -> None:
        """Refuse new associations, then give the active ones ``timeout`` seconds to finish.

        An association still open after that is aborted; its unacknowledged stores
        are retried by the sender, so nothing acknowledged is lost.
        """
        servers, self._servers = self._servers, []
        if not servers:
            return
        # Connected but silent peers have nothing in flight: they are not waited for.
        active = [
            assoc
            for server in servers
            for assoc in server.active_associations
            if assoc.is_established
        ]
        for server in servers:
            server.shutdown()
        deadline = time.monotonic() + timeout
        for assoc in active:
            assoc.join(max(0.0, deadline - time.monotonic()))
            if assoc.is_alive():
                assoc.abort()
        logger.info("listener stopped", extra={"action": "stop"})

    def handle_echo(self, event: Event) -> int:
        """C-ECHO: we are alive."""
        return status.SUCCESS

    def handle_store(self, event: Event) -> int | Dataset:
        """C-STORE: durable file, committed row, then Success; else a failure status."""
        calling_ae, peer = _peer(event)
        request = cast(C_STORE, event.request)
        sop_instance_uid = str(request.AffectedSOPInstanceUID)
        log = {"action": "c-store", "sop_instance_uid": sop_instance_uid, "calling_ae": calling_ae}
        try:
            check_uid(sop_instance_uid, "AffectedSOPInstanceUID")
            sop_class_uid = check_uid(str(event.request.AffectedSOPClassUID), "AffectedSOPClassUID")
        except PermanentError as exc:
            logger.warning("refused: %s", exc, extra=log)
            return status.CANNOT_UNDERSTAND
        refusal = self._mismatch(event, sop_class_uid, sop_instance_uid)
        if refusal is not None:
            logger.warning("refused: %s", refusal.comment, extra=log)
            return _failure(status.DATASET_MISMATCH, refusal)
        incoming = self._settings.incoming_path
        try:
            encoded = event.encoded_dataset(include_meta=True)
            # Room for the file and for what the worker will write for it (SR and summary
            # image), on top of the floor: an acknowledged instance must be able to finish.
            needed = self._min_free + len(encoded) * (1 + WORKER_OUTPUT_RATIO)
            if free_bytes(incoming) < needed:
                logger.error("refused: storage below its free-space floor", extra=log)
                return status.OUT_OF_RESOURCES
            accepted = queue.accepted_file(self._sessions, sop_instance_uid)
            if accepted is not None:
                return self._duplicate(event, accepted, log)
            path = instance_path(incoming, sop_instance_uid, data_set_digest(_received(event)))
            write_atomically(path, encoded)
            received = queue.Received(
                sop_instance_uid=sop_instance_uid,
                sop_class_uid=sop_class_uid,
                transfer_syntax_uid=str(event.context.transfer_syntax),
                calling_ae=calling_ae,
                peer_address=peer,
                file_path=str(path),
            )
            queued = queue.enqueue(self._sessions, received)
            if not queued:
                return self._lost_race(event, sop_instance_uid, path, log)
        except OSError as exc:
            reason = "out of space" if exc.errno in _OUT_OF_SPACE else f"file error {exc.errno}"
            logger.error("refused: %s", reason, extra=log)
            return status.OUT_OF_RESOURCES
        except SQLAlchemyError as exc:
            logger.error("refused: queue unavailable (%s)", type(exc).__name__, extra=log)
            return status.OUT_OF_RESOURCES
        logger.info("queued", extra=log)
        self._on_queued()
        return status.SUCCESS

    def _lost_race(
        self, event: Event, sop_instance_uid: str, path: Path, log: dict[str, str]
    ) -> int | Dataset:
        """Another association stored this SOP Instance UID between our check and our insert:
        our file (named by its data set, so nobody wrote over it) is the same copy or a
        conflicting one, handled as any later duplicate."""
        accepted = queue.accepted_file(self._sessions, sop_instance_uid)
        if accepted is None:  # the other row is gone again: let the sender retry
            path.unlink(missing_ok=True)
            logger.error("refused: instance row vanished while storing", extra=log)
            return status.OUT_OF_RESOURCES
        if Path(accepted[1]) != path:
            path.unlink(missing_ok=True)
        return self._duplicate(event, accepted, log)

    def _duplicate(self, event: Event, accepted: tuple[int, str], log: dict[str, str]) -> int:
        """A known SOP Instance UID: the same data set is acknowledged (queued once); another
        one is kept beside the first, recorded and counted, never dropped silently. Both are
        answered Success: the sender has nothing to retry."""
        instance_id, file_path = accepted
        digest = data_set_digest(_received(event))
        stored = stored_data_set_digest(Path(file_path))
        if stored is None or stored == digest:  # the first copy's file may be gone (retention)
            logger.info("duplicate acknowledged", extra=log)
            return status.SUCCESS
        path = conflict_path(Path(file_path), digest)
        if path.exists():
            logger.info("conflicting copy already kept", extra={**log, "file": path.name})
            return status.SUCCESS
        write_atomically(path, event.encoded_dataset(include_meta=True))
        queue.record_conflicting_copy(self._sessions, instance_id, str(path))
        logger.warning("conflicting copy kept", extra={**log, "file": path.name})
        return status.SUCCESS

    @staticmethod
    def _mismatch(event: Event, sop_class_uid: str, sop_instance_uid: str) -> Mismatch | None:
        """The data set or the context contradicting the command's UIDs, if they do."""
        if sop_class_uid != str(event.context.abstract_syntax):
            return Mismatch(0x00000002, "(0000,0002) Affected SOP Class UID is not the context's")
        data = cast(BytesIO, cast(C_STORE, event.request).DataSet)
        data.seek(0)
        head = read_head(data.read(HEAD_BYTES), UID(str(event.context.transfer_syntax)))
        return None if head is None else head.mismatch(sop_class_uid, sop_instance_uid)

    def _log_rejected(self, event: Event) -> None:
        calling_ae, peer = _peer(event)
        logger.warning(
            "association rejected",
            extra={"action": "reject", "calling_ae": calling_ae, "peer": peer},
        )
