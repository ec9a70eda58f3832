"""The outbound queue: produced objects owed to destinations, ``pending`` -> ``sent`` / ``failed``.

Its state machine is changed only here, as the instance one is only in ``osteoflag.db.queue``;
the sender is a DICOM client that calls these. A claim (``osteoflag.db.claims``) names the
sending process and pushes ``next_attempt_at`` past the claim's lease in the statement that
takes the rows, so two senders never send the same object. The rows of a sender that dies
mid-run are released once its heartbeat stops (``osteoflag.db.processes``), and are due
again at the end of the lease in any case. An outcome is recorded only while the claim it was
sent under still holds (``lease_owner``): a sender taken for dead, whose rows another has
claimed since, cannot overwrite what the new owner records. When a row is due, its creation
(the delivery deadline counts from it) and its retries are stamped and judged by the
database's clock (``osteoflag.db.clock``), so senders whose clocks differ agree on them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db import claims
from osteoflag.db.clock import database_now
from osteoflag.db.models import Event, Instance, Outbound, OutboundState, utcnow
from osteoflag.pacs.retry import Decision, GiveUp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Produced:
    """An object written under the outgoing folder, to be owed to each destination."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    path: Path


def add_pending(
    session: Session,
    instance: Instance,
    produced: Sequence[Produced],
    destinations: Mapping[str, Sequence[str]],
) -> list[Outbound]:
    """Add a ``pending`` row per object of ``produced`` and destination to ``session``;
    ``destinations`` names, for each kind of object, the destinations that take it.

    Returns the rows added. Rows that already exist for the same SOP Instance UID and
    destination are left as they are, so recording an object twice is safe.
    """
    now = database_now(session)
    rows: list[Outbound] = []
    for item in produced:
        known = set(
            session.scalars(
                select(Outbound.destination).where(
                    Outbound.sop_instance_uid == item.sop_instance_uid
                )
            )
        )
        rows.extend(
            Outbound(
                instance_id=instance.id,
                kind=item.kind,
                sop_class_uid=item.sop_class_uid,
                sop_instance_uid=item.sop_instance_uid,
                file_path=str(item.path),
                destination=destination,
                state=OutboundState.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            for destination in destinations.get(item.kind, ())
            if destination not in known
        )
    session.add_all(rows)
    logger.info(
        "outbound objects produced",
        extra={
            "action": "produce_outbound",
            "instance_id": instance.id,
            "sop_instance_uid": instance.sop_instance_uid,
            "objects": len(rows),
        },
    )
    return rows


#: The event that records an object kept in shadow mode (made, shown, not sent).
SHADOW_EVENT = "kept_shadow"


def record_shadow(
    session: Session,
    instance: Instance,
    produced: Sequence[Produced],
    withheld: Mapping[str, Sequence[str]],
) -> None:
    """Record in the event log each object of ``produced`` kept in shadow mode and the
    destinations it was not sent to (``withheld`` names them for each kind kept; an object
    of another kind is not kept for any): no outbound row is made for those, so nothing can
    ever send it, and the operator page and retention find its file here."""
    kept = [item for item in produced if item.kind in withheld]
    for item in kept:
        detail = {
            "kind": item.kind,
            "path": str(item.path),
            "not_sent_to": list(withheld[item.kind]),
        }
        session.add(Event(instance_id=instance.id, action=SHADOW_EVENT, detail=json.dumps(detail)))
    logger.info(
        "outbound objects kept in shadow mode",
        extra={
            "action": "shadow",
            "instance_id": instance.id,
            "sop_instance_uid": instance.sop_instance_uid,
            "objects": len(kept),
            "destinations": len({key for keys in withheld.values() for key in keys}),
        },
    )


@dataclass(frozen=True)
class Kept:
    """An object kept in shadow mode."""

    kind: str
    path: Path
    not_sent_to: tuple[str, ...]


def _kept(text: str | None) -> Kept:
    """An object kept in shadow mode, from its event's detail (:func:`record_shadow`)."""
    detail = json.loads(text or "{}")
    return Kept(detail["kind"], Path(detail["path"]), tuple(detail["not_sent_to"]))


def kept_in_shadow(session: Session, instance_id: int) -> list[Kept]:
    """The objects of an instance kept in shadow mode, in the order they were made."""
    details = session.scalars(
        select(Event.detail)
        .where(Event.instance_id == instance_id, Event.action == SHADOW_EVENT)
        .order_by(Event.id)
    )
    return [_kept(text) for text in details]


def kept_until_retention(session: Session) -> list[Kept]:
    """Every object kept in shadow mode whose instance retention has not reached yet (no
    outbound row names them: these records are what keeps their files)."""
    details = session.scalars(
        select(Event.detail)
        .join(Instance, Instance.id == Event.instance_id)
        .where(Event.action == SHADOW_EVENT, Instance.removed_at.is_(None))
    )
    return [_kept(text) for text in details]


def claim_due(
    sessions: sessionmaker[Session],
    owner: str,
    destination: str,
    limit: int,
    lease: timedelta,
    now: datetime | None = None,
) -> list[Outbound]:
    """Atomically take up to ``limit`` due ``pending`` objects of one destination for
    ``owner`` (the sending process), until ``lease`` from now at the latest; ``now`` is the
    database's clock unless given (tests that move time on)."""
    return claims.claim(
        sessions,
        Outbound,
        due=[Outbound.destination == destination, Outbound.state == OutboundState.PENDING],
        order=[Outbound.next_attempt_at, Outbound.id],
        limit=limit,
        values=lambda moment: {"next_attempt_at": moment + lease, "lease_owner": owner},
        now=now,
    )


def _claimed(row: Outbound) -> ColumnElement[bool]:
    """``row`` is still pending under the claim it was taken with (as :func:`claim_due`
    returned it)."""
    return and_(
        Outbound.id == row.id,
        Outbound.state == OutboundState.PENDING,
        Outbound.lease_owner == row.lease_owner,
    )


def _claim_lost(row: Outbound, outcome: str) -> None:
    logger.warning(
        "claim lost before the outcome was recorded",
        extra={
            "action": "claim_lost",
            "destination": row.destination,
            "sop_instance_uid": row.sop_instance_uid,
            "outcome": outcome,
        },
    )


def release(sessions: sessionmaker[Session], rows: Sequence[Outbound]) -> None:
    """Make claimed but unattempted rows due again at once (the run ran out of time, was
    stopped, or its association ended); rows claimed by another since are left alone."""
    if not rows:
        return
    with sessions() as session:
        session.execute(
            update(Outbound)
            .where(or_(*(_claimed(row) for row in rows)))
            .values(next_attempt_at=database_now(session), lease_owner=None)
        )
        session.commit()


def release_claims(sessions: sessionmaker[Session], condition: ColumnElement[bool]) -> int:
    """Make the claimed ``pending`` rows matching ``condition`` (e.g. claimed by a dead
    process) due again at once; return how many."""
    with sessions() as session:
        count = session.execute(
            update(Outbound)
            .where(
                Outbound.state == OutboundState.PENDING,
                Outbound.lease_owner.is_not(None),
                condition,
            )
            .values(next_attempt_at=database_now(session), lease_owner=None)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    return int(count)


def mark_sent(sessions: sessionmaker[Session], row: Outbound, warning: str | None) -> bool:
    """``sent``, never to be sent again; ``warning`` notes a Warning status, if any. False
    (nothing changed, logged) if ``row``'s claim was lost."""
    with sessions() as session:
        changed = session.execute(
            update(Outbound)
            .where(_claimed(row))
            .values(
                state=OutboundState.SENT,
                attempts=Outbound.attempts + 1,
                sent_at=utcnow(),
                last_error=warning,
                lease_owner=None,
            )
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    if not changed:
        _claim_lost(row, "sent")
    return bool(changed)


def mark_attempt_failed(
    sessions: sessionmaker[Session],
    row: Outbound,
    error: str,
    decide: Callable[[datetime], Decision],
) -> Decision | None:
    """Count a failed attempt, as ``decide`` rules at the database's now: due again at its
    time, or ``failed`` with its reason. Returns the decision; None (nothing changed, logged)
    if ``row``'s claim was lost."""
    with sessions() as session:
        decision = decide(database_now(session))
        values: dict[str, object] = (
            {"state": OutboundState.FAILED, "last_error": decision.reason}
            if isinstance(decision, GiveUp)
            else {"next_attempt_at": decision.when, "last_error": error}
        )
        changed = session.execute(
            update(Outbound)
            .where(_claimed(row))
            .values(attempts=Outbound.attempts + 1, lease_owner=None, **values)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    if not changed:
        _claim_lost(row, "failed attempt")
        return None
    return decision


def fail_unconfigured(sessions: sessionmaker[Session], configured: Sequence[str]) -> int:
    """Fail ``pending`` objects owed to a destination not in ``configured``.

    Nothing would ever send them; :func:`requeue_failed` revives them if the destination
    comes back into the configuration.
    """
    with sessions() as session:
        count = session.execute(
            update(Outbound)
            .where(Outbound.state == OutboundState.PENDING, Outbound.destination.not_in(configured))
            .values(state=OutboundState.FAILED, last_error="destination no longer configured")
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    if count:
        logger.warning(
            "objects for unconfigured destinations failed",
            extra={"action": "send", "count": int(count)},
        )
    return int(count)


def requeue_failed(sessions: sessionmaker[Session]) -> int:
    """Put every ``failed`` outbound object whose file still exists back to ``pending``."""
    with sessions() as session:
        now = database_now(session)
        count = session.execute(
            update(Outbound)
            .where(Outbound.state == OutboundState.FAILED, Outbound.removed_at.is_(None))
            .values(
                state=OutboundState.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                last_error=None,
            )
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    return int(count)
