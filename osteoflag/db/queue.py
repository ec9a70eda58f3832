"""The instance queue: enqueue on receipt, atomic batch claims with a lease, outcomes.

Its state machine (``queued`` -> ``processing`` -> ``done`` / ``skipped`` / ``failed``) is
changed only here, as the outbound one is only in ``osteoflag.db.outbound``. Claims are one
atomic statement (``osteoflag.db.claims``); a lease (owner + expiry) lets a dead worker's
rows be recovered. When a row is due and when its lease ends are stamped and judged by the
database's clock (``osteoflag.db.clock``), so hosts whose clocks differ agree on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db import claims
from osteoflag.db.clock import database_now
from osteoflag.db.engine import reading
from osteoflag.db.models import Event, Instance, InstanceState, Outbound, OutboundState, utcnow
from osteoflag.inference.region import Region

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """What the Storage SCP knows about an instance it has just written to disk."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    peer_address: str
    file_path: str


@dataclass(frozen=True)
class Result:
    """A classification to record against a claimed instance."""

    probability: float
    label: str
    threshold: float
    model: str
    inference_ms: float
    #: Where the model points, for a fracture when the bundle localises: handed to the
    #: objects written for the result (SR, presentation state, summary), not stored here.
    region: Region | None = None
    #: When the result was made: the instance's ``finished_at`` and the produced objects'
    #: Content and Series Date/Time, so they agree (even after a requeue).
    made_at: datetime = field(default_factory=utcnow)


def is_known(sessions: sessionmaker[Session], sop_instance_uid: str) -> bool:
    """True when an instance with this SOP Instance UID was already accepted."""
    with reading(sessions) as session:
        found = session.scalar(
            select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
        )
    return found is not None


#: Event action: a copy with a known SOP Instance UID but another data set, kept beside it.
CONFLICTING_COPY = "conflicting_copy"


def accepted_file(sessions: sessionmaker[Session], sop_instance_uid: str) -> tuple[int, str] | None:
    """The id and file of the instance accepted with this SOP Instance UID, if any."""
    with reading(sessions) as session:
        row = session.execute(
            select(Instance.id, Instance.file_path).where(
                Instance.sop_instance_uid == sop_instance_uid
            )
        ).first()
    return None if row is None else (int(row[0]), str(row[1]))


def record_conflicting_copy(sessions: sessionmaker[Session], instance_id: int, path: str) -> None:
    """Note, against the accepted instance, the different copy kept at ``path``."""
    with sessions() as session:
        session.add(Event(instance_id=instance_id, action=CONFLICTING_COPY, detail=path))
        session.commit()


def conflicting_copies(session: Session) -> int:
    """How many different copies of accepted instances have been kept."""
    count = session.scalar(select(func.count()).where(Event.action == CONFLICTING_COPY))
    return int(count or 0)


def enqueue(sessions: sessionmaker[Session], received: Received) -> bool:
    """Insert and commit a queue row; False when the SOP Instance UID is already known.

    Only after this returns may the SCP acknowledge the C-STORE.
    """
    with sessions() as session:
        now = database_now(session)
        row = Instance(
            received_at=now,
            next_attempt_at=now,
            sop_instance_uid=received.sop_instance_uid,
            sop_class_uid=received.sop_class_uid,
            transfer_syntax_uid=received.transfer_syntax_uid,
            calling_ae=received.calling_ae,
            peer_address=received.peer_address,
            file_path=received.file_path,
        )
        session.add(row)
        try:
            session.flush()
            session.add(Event(instance_id=row.id, action="received"))
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
    return True


def claim_instances(
    sessions: sessionmaker[Session], owner: str, limit: int, lease: timedelta
) -> list[Instance]:
    """Atomically move up to ``limit`` due queued instances to ``processing`` for ``owner``,
    leased until ``lease`` from now."""
    return claims.claim(
        sessions,
        Instance,
        due=[Instance.state == InstanceState.QUEUED],
        order=[Instance.received_at, Instance.id],
        limit=limit,
        values=lambda now: {
            "state": InstanceState.PROCESSING,
            "attempts": Instance.attempts + 1,
            "lease_owner": owner,
            "lease_expires_at": now + lease,
        },
    )


def _release_claim(
    session: Session, instance_id: int, owner: str, action: str, **values: object
) -> bool:
    """Set ``values`` on a row ``owner`` still holds, drop the lease, log ``action``; False
    (nothing changed) if the lease was lost."""
    statement = (
        update(Instance)
        .where(
            Instance.id == instance_id,
            Instance.state == InstanceState.PROCESSING,
            Instance.lease_owner == owner,
        )
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    changed = bool(session.execute(statement).rowcount == 1)  # type: ignore[attr-defined]
    if changed:
        detail = values.get("error")
        session.add(Event(instance_id=instance_id, action=action, detail=detail))
    return changed


def _finish(
    session: Session,
    instance_id: int,
    owner: str,
    state: InstanceState,
    finished_at: datetime,
    **values: object,
) -> bool:
    return _release_claim(
        session, instance_id, owner, state.value, state=state, finished_at=finished_at, **values
    )


def complete(session: Session, instance_id: int, owner: str, result: Result) -> bool:
    """Record ``result`` and mark ``done``; False if the lease was lost (row left alone).

    Runs in the caller's session so the outbound rows of the same result can be
    committed in the same transaction.
    """
    return _finish(
        session,
        instance_id,
        owner,
        InstanceState.DONE,
        result.made_at,
        probability=result.probability,
        label=result.label,
        threshold=result.threshold,
        model=result.model,
        inference_ms=result.inference_ms,
        error=None,
    )


def refuse(
    session: Session,
    instance_id: int,
    owner: str,
    state: InstanceState,
    reason: str,
    finished_at: datetime,
) -> bool:
    """Mark ``skipped`` (outside the model domain) or ``failed``, with ``reason``; False if
    the lease was lost. Runs in the caller's session, like :func:`complete`."""
    if state not in (InstanceState.SKIPPED, InstanceState.FAILED):
        raise ValueError(f"an instance is refused as skipped or failed, not {state.value}")
    return _finish(session, instance_id, owner, state, finished_at, error=reason)


def retry_later(
    session: Session, instance_id: int, owner: str, reason: str, delay: timedelta
) -> bool:
    """Back to ``queued`` for ``delay`` after a transient failure (e.g. a full disk), with
    ``reason`` shown meanwhile; the attempt is not counted against ``worker.max_attempts``,
    which is about attempts a crash interrupted. False if the lease was lost."""
    return _release_claim(
        session,
        instance_id,
        owner,
        "retry",
        state=InstanceState.QUEUED,
        attempts=Instance.attempts - 1,
        next_attempt_at=database_now(session) + delay,
        error=reason,
    )


def recover_expired(sessions: sessionmaker[Session], max_attempts: int) -> int:
    """Re-queue ``processing`` rows whose lease has expired, or fail those out of attempts.

    An instance that has taken down its worker ``max_attempts`` times is a poison
    pill: it is failed with a reason instead of crashing the next worker too.
    """
    with sessions() as session:
        expired = Instance.lease_expires_at < database_now(session)
        return _recover(session, max_attempts, expired)


def recover_all(sessions: sessionmaker[Session], max_attempts: int) -> int:
    """Re-queue every ``processing`` row: for a single daemon restarting after a crash."""
    return recover(sessions, max_attempts, Instance.lease_owner.is_not(None))


def recover(
    sessions: sessionmaker[Session], max_attempts: int, condition: ColumnElement[bool]
) -> int:
    """Re-queue the ``processing`` rows matching ``condition`` (e.g. claimed by a dead
    process), or fail those out of attempts; return how many."""
    with sessions() as session:
        return _recover(session, max_attempts, condition)


def _recover(session: Session, max_attempts: int, condition: ColumnElement[bool]) -> int:
    """:func:`recover` in ``session``, committed."""
    base = update(Instance).where(Instance.state == InstanceState.PROCESSING, condition)
    failed = session.execute(
        base.where(Instance.attempts >= max_attempts).values(
            state=InstanceState.FAILED,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=utcnow(),
            error=f"gave up after {max_attempts} interrupted attempts",
        )
    ).rowcount  # type: ignore[attr-defined]
    requeued = session.execute(
        base.values(state=InstanceState.QUEUED, lease_owner=None, lease_expires_at=None)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if failed or requeued:
        logger.warning(
            "recovered interrupted instances",
            extra={"action": "recover", "requeued": requeued, "failed": failed},
        )
    return int(failed) + int(requeued)


def requeue_failed(sessions: sessionmaker[Session], ids: Sequence[int] | None = None) -> int:
    """Put ``failed`` instances (all, or those in ``ids``) back in the queue with fresh attempts.

    Instances whose file retention has removed are left alone: there is nothing to retry.
    """
    statement = update(Instance).where(
        Instance.state == InstanceState.FAILED, Instance.removed_at.is_(None)
    )
    if ids is not None:
        statement = statement.where(Instance.id.in_(ids))
    with sessions() as session:
        count = session.execute(
            statement.values(
                state=InstanceState.QUEUED,
                attempts=0,
                error=None,
                finished_at=None,
                next_attempt_at=database_now(session),
            )
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    return int(count)


def counts(sessions: sessionmaker[Session]) -> dict[str, dict[str, int]]:
    """Rows per state for instances and outbound objects, every state present."""
    with reading(sessions) as session:
        instances = dict(
            session.execute(select(Instance.state, func.count()).group_by(Instance.state)).all()
        )
        outbound = dict(
            session.execute(select(Outbound.state, func.count()).group_by(Outbound.state)).all()
        )
    return {
        "instances": {state.value: int(instances.get(state, 0)) for state in InstanceState},
        "outbound": {state.value: int(outbound.get(state, 0)) for state in OutboundState},
    }
