"""The sender: a DICOM client that C-STOREs pending outbound objects to every destination.

Each run works every configured destination in its own thread with its own single
association (PS3.7 C-STORE over PS3.8 association), time-boxed by the ACSE, DIMSE and
network timeouts and by ``[sender] run_seconds``, so one dead PACS never blocks
another. Each object's outcome is committed as soon as it is known: ``sent`` on a
Success or Warning status (PS3.4 B.2.3) and never sent again; otherwise the attempt
is counted and the retry policy reschedules it or gives it up as ``failed``. The rows'
states change only through ``osteoflag.db.outbound``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db import outbound
from osteoflag.db.models import Outbound
from osteoflag.db.processes import owner_name
from osteoflag.destination_settings import Destination, DicomWebDestination
from osteoflag.errors import ConfigError, ContextsRefused, DeliveryError, PixelDataError
from osteoflag.pacs import summary
from osteoflag.pacs.outbound import destination_key, destination_keys
from osteoflag.pacs.retry import GiveUp, RetryPolicy
from osteoflag.pacs.scu import UNCOMPRESSED, Peer, associate, client_ae, usable
from osteoflag.pacs.status import is_permanent, is_success
from osteoflag.pacs.stow import store_instance, stow_client
from osteoflag.pacs.tls import client_context

logger = logging.getLogger(__name__)

#: Compressed syntaxes proposed, each in a context of its own, for the SOP classes we write
#: compressed: the summary image. A peer that declines them gets it decompressed.
_COMPRESSED_SYNTAXES = {SecondaryCaptureImageStorage: summary.TRANSFER_SYNTAX}


@dataclass(frozen=True)
class DeliveryReport:
    """Outcome counts of one sender run (over all destinations)."""

    sent: int = 0
    retried: int = 0
    failed: int = 0

    def __add__(self, other: DeliveryReport) -> DeliveryReport:
        return DeliveryReport(
            self.sent + other.sent, self.retried + other.retried, self.failed + other.failed
        )


def send_pending(
    sessions: sessionmaker[Session],
    settings: Settings,
    now: datetime | None = None,
    owner: str | None = None,
    stop: threading.Event | None = None,
) -> DeliveryReport:
    """One sender run: deliver every due ``pending`` object to its destination.

    The sender thread (``osteoflag.daemon.delivery.SenderLoop``) runs it when woken and
    every ``[sender] interval_seconds``, one run at a time, as ``owner`` (the process
    whose heartbeat vouches for its claims). Destinations are served in parallel. Once
    ``stop`` is set (SIGTERM) the run ends before the next object: the object in flight
    completes and the rest are given back, due at once, for the next process. Which objects
    are due is judged by the database's clock, or at ``now`` when given (tests that move time
    on).
    """
    stopping = stop or threading.Event()
    claimant = owner or owner_name("sender")
    orphaned = outbound.fail_unconfigured(sessions, destination_keys(settings))
    if not settings.destinations:
        return DeliveryReport(failed=orphaned)
    policy = RetryPolicy.from_settings(settings.sender)
    with ThreadPoolExecutor(
        max_workers=len(settings.destinations), thread_name_prefix="sender"
    ) as pool:
        reports = pool.map(
            lambda destination: deliver(
                sessions, settings, destination, policy, now, claimant, stopping
            ),
            settings.destinations,
        )
        return sum(reports, DeliveryReport(failed=orphaned))


def check_trust(settings: Settings) -> None:
    """Load every destination's certificates and keys now, raising ConfigError naming the
    key and file, so that ``serve`` refuses to start without them."""
    for destination in settings.destinations:
        if isinstance(destination, DicomWebDestination):
            stow_client(destination, settings.sender.timeout_seconds).close()
        elif destination.tls is not None:
            client_context(destination.tls)


def claim_lease(settings: Settings) -> timedelta:
    """Longest a run can hold a claim: the run budget, counted from the claim (association
    included), then one last C-STORE or STOW request (one timeout), with two timeouts to
    spare, so the claim never lapses under a run that is still sending."""
    sender = settings.sender
    return timedelta(seconds=sender.run_seconds + 3 * sender.timeout_seconds)


def deliver(
    sessions: sessionmaker[Session],
    settings: Settings,
    destination: Destination | DicomWebDestination,
    policy: RetryPolicy,
    now: datetime | None,
    owner: str,
    stop: threading.Event,
) -> DeliveryReport:
    """Send the due objects of one destination (over one association, or by STOW-RS), claimed
    for ``owner``, until the run's budget ends or ``stop`` is set."""
    if stop.is_set():
        return DeliveryReport()
    key = destination_key(destination)
    budget = _Budget(time.monotonic() + settings.sender.run_seconds, stop)  # lease from now
    rows = outbound.claim_due(
        sessions, owner, key, settings.sender.batch_size, claim_lease(settings), now
    )
    if not rows:
        return DeliveryReport()
    # A certificate checked at start may have been rotated away since (ConfigError): the rows
    # wait and say so, as they do for a destination that refuses or cannot be reached.
    if isinstance(destination, DicomWebDestination):
        try:
            client = stow_client(destination, settings.sender.timeout_seconds)
        except ConfigError as exc:
            return _all_wait(sessions, rows, policy, key, str(exc))
        with client:
            return _stow_all(sessions, client, rows, policy, key, budget)
    try:
        assoc = _associate(settings, destination, {row.sop_class_uid for row in rows})
    except (ConfigError, DeliveryError) as exc:
        permanent = isinstance(exc, ContextsRefused) and exc.permanent
        return _all_wait(sessions, rows, policy, key, str(exc), permanent)
    try:
        return _store_all(sessions, assoc, rows, policy, key, budget)
    finally:
        if usable(assoc):
            assoc.release()


def _all_wait(
    sessions: sessionmaker[Session],
    rows: Sequence[Outbound],
    policy: RetryPolicy,
    key: str,
    error: str,
    permanent: bool = False,
) -> DeliveryReport:
    """The destination cannot be reached or trusted: every row waits for its next attempt;
    or it supports none of their SOP classes (``permanent``): every row is given up, as one
    whose SOP class alone it refuses is."""
    logger.warning(
        "destination refused, unreachable or untrusted",
        extra={"action": "send", "destination": key, "reason": error},
    )
    return sum(
        (_failed(sessions, row, policy, error, permanent, logged=True) for row in rows),
        DeliveryReport(),
    )


def _associate(settings: Settings, destination: Destination, sop_classes: set[str]) -> Association:
    ae = client_ae(settings.listener.ae_title, settings.sender.timeout_seconds)
    for sop_class in sorted(sop_classes):
        ae.add_requested_context(sop_class, list(UNCOMPRESSED))
        if sop_class in _COMPRESSED_SYNTAXES:
            ae.add_requested_context(sop_class, _COMPRESSED_SYNTAXES[sop_class])
    peer = Peer(destination.host, destination.port, destination.ae_title, destination.tls)
    return associate(ae, peer)


def _store_all(
    sessions: sessionmaker[Session],
    assoc: Association,
    rows: Sequence[Outbound],
    policy: RetryPolicy,
    key: str,
    budget: _Budget,
) -> DeliveryReport:
    """C-STORE ``rows`` one by one, reading each file just before it is sent; once the
    association is no longer :func:`usable`, the rest wait for the next run."""
    report = DeliveryReport()
    for _, row in _in_time(sessions, budget, rows, lambda: usable(assoc)):
        try:
            dataset = dcmread(row.file_path)
        except (OSError, InvalidDicomError) as exc:
            report += _failed(sessions, row, policy, *_unreadable(row, exc))
            continue
        try:
            response = assoc.send_c_store(as_accepted(dataset, assoc))
        except (ValueError, RuntimeError, AttributeError, PixelDataError) as exc:
            report += _failed(sessions, row, policy, f"{key} cannot take it: {exc}", True)
            continue
        status = int(response.Status) if "Status" in response else None
        if status is not None and is_success(status):
            warning = None if status == 0 else f"warning 0x{status:04X}"
            report += _sent(sessions, row, key, f"0x{status:04X}", warning)
        elif status is None:
            report += _failed(sessions, row, policy, f"no C-STORE response from {key}", False)
        else:
            permanent = is_permanent(status)
            report += _failed(sessions, row, policy, f"{key} answered 0x{status:04X}", permanent)
    return report


@dataclass(frozen=True)
class _Budget:
    """How long a run may go on: until ``stop_at`` (:func:`time.monotonic`), counted from the
    claim, and not past a ``stop`` (SIGTERM)."""

    stop_at: float
    stop: threading.Event

    def spent(self) -> bool:
        return self.stop.is_set() or time.monotonic() > self.stop_at


def _in_time(
    sessions: sessionmaker[Session],
    budget: _Budget,
    rows: Sequence[Outbound],
    usable: Callable[[], bool],
) -> Iterator[tuple[int, Outbound]]:
    """``rows`` with their index while the run's ``budget`` lasts and the connection is
    ``usable``; the rest are released, left pending and untouched for the next run."""
    for index, row in enumerate(rows):
        if budget.spent() or not usable():
            outbound.release(sessions, rows[index:])
            return
        yield index, row


def _unreadable(row: Outbound, exc: OSError | InvalidDicomError) -> tuple[str, bool]:
    """The error of an object whose file cannot be read, and whether it is permanent: only a
    missing file or one that is not DICOM is; any other error (EMFILE, EIO, ESTALE on shared
    storage, EACCES until a permissions fix) may clear, so the retry policy takes it."""
    permanent = isinstance(exc, (FileNotFoundError, InvalidDicomError))
    return f"cannot read {row.file_path}: {exc}", permanent


def as_accepted(dataset: Dataset, assoc: Association) -> Dataset:
    """``dataset`` in a transfer syntax the peer accepted for its SOP class: a compressed
    object whose syntax was declined goes decompressed (Explicit VR Little Endian, RGB, same
    SOP Instance UID; Lossy Image Compression stays "01")."""
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
    if not syntax.is_compressed or (dataset.SOPClassUID, syntax) in accepted:
        return dataset
    try:
        dataset.decompress(generate_instance_uid=False)
    except Exception as exc:  # pydicom's decoders raise many unrelated types
        raise PixelDataError(
            f"(7FE0,0010) cannot decompress {dataset.SOPInstanceUID} ({syntax.name}) for a "
            f"peer that declined it: {exc}"
        ) from exc
    return dataset


def _stow_all(
    sessions: sessionmaker[Session],
    client: httpx.Client,
    rows: Sequence[Outbound],
    policy: RetryPolicy,
    key: str,
    budget: _Budget,
) -> DeliveryReport:
    """STOW-RS ``rows`` one by one over ``client``; a server that does not answer fails the
    rest of the run."""
    report = DeliveryReport()
    for index, row in _in_time(sessions, budget, rows, lambda: True):
        try:
            dicom = Path(row.file_path).read_bytes()
        except OSError as exc:
            report += _failed(sessions, row, policy, *_unreadable(row, exc))
            continue
        outcome = store_instance(client, dicom, row.sop_instance_uid)
        if outcome.stored:
            warning = None if outcome.detail == "HTTP 200" else f"warning {outcome.detail}"
            report += _sent(sessions, row, key, outcome.detail, warning)
        elif not outcome.answered:
            logger.warning(
                "destination unreachable",
                extra={"action": "send", "destination": key, "reason": outcome.detail},
            )
            for rest in rows[index:]:
                report += _failed(sessions, rest, policy, outcome.detail, False, logged=True)
            break
        else:
            error = f"{key} answered {outcome.detail}"
            report += _failed(sessions, row, policy, error, outcome.permanent)
    return report


def _sent(
    sessions: sessionmaker[Session], row: Outbound, key: str, status: str, warning: str | None
) -> DeliveryReport:
    if not outbound.mark_sent(sessions, row, warning):
        return DeliveryReport()
    logger.info(
        "object delivered",
        extra={
            "action": "send",
            "destination": key,
            "kind": row.kind,
            "sop_instance_uid": row.sop_instance_uid,
            "status": status,
        },
    )
    return DeliveryReport(sent=1)


def _failed(
    sessions: sessionmaker[Session],
    row: Outbound,
    policy: RetryPolicy,
    error: str,
    permanent: bool,
    *,
    logged: bool = False,
) -> DeliveryReport:
    """Count a failed attempt of ``row`` and log it once: given up always, to be retried
    unless the caller has ``logged`` the failure of the whole destination already."""
    decision = outbound.mark_attempt_failed(
        sessions,
        row,
        error,
        lambda now: policy.decide(
            attempts=row.attempts + 1,
            created_at=row.created_at,
            now=now,
            error=error,
            permanent=permanent,
        ),
    )
    if decision is None:
        return DeliveryReport()
    if isinstance(decision, GiveUp):
        logger.error(
            "delivery given up",
            extra={
                "action": "send",
                "destination": row.destination,
                "sop_instance_uid": row.sop_instance_uid,
                "error": decision.reason,
            },
        )
        return DeliveryReport(failed=1)
    if not logged:
        logger.warning(
            "delivery attempt failed, will retry",
            extra={
                "action": "send",
                "destination": row.destination,
                "sop_instance_uid": row.sop_instance_uid,
                "error": error,
                "next_attempt_at": decision.when.isoformat(),
            },
        )
    return DeliveryReport(retried=1)
