"""What the pages and ``/metrics`` read from the queue: counts, ages, recent rows.

Every query runs in a read-only session (``engine.reading``), so a page view never takes
SQLite's write lock away from the listener or the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db import queue
from osteoflag.db.engine import reading
from osteoflag.db.models import Instance, InstanceState, Outbound, OutboundState, utcnow
from osteoflag.db.outbound import Kept, kept_in_shadow

#: Inference latency histogram buckets, in seconds (``/metrics``).
LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class DestinationStatus:
    """Delivery state of one destination: rows per state and the latest error."""

    destination: str
    states: dict[str, int]
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_sent_at: datetime | None = None


@dataclass(frozen=True)
class Overview:
    """The dashboard's numbers."""

    counts: dict[str, dict[str, int]]
    oldest_queued_age: float | None
    last_hour: dict[str, int]
    destinations: list[DestinationStatus] = field(default_factory=list)
    #: Different copies of already accepted instances, kept beside them (never dropped).
    conflicting_copies: int = 0


@dataclass(frozen=True)
class Latency:
    """Inference latency of finished instances as a cumulative histogram (seconds)."""

    buckets: list[tuple[float, int]]
    count: int
    total_seconds: float


def database_answers(sessions: sessionmaker[Session]) -> bool:
    """True when a trivial query succeeds (``/healthz``)."""
    try:
        with reading(sessions) as session:
            session.execute(text("SELECT 1"))
    except Exception:  # any driver or pool failure means "not healthy", never a crash
        return False
    return True


def oldest_queued_age(session: Session, now: datetime) -> float | None:
    """Seconds since the oldest still-queued instance was received; None when none is."""
    oldest = session.scalar(
        select(func.min(Instance.received_at)).where(Instance.state == InstanceState.QUEUED)
    )
    if oldest is None:
        return None
    return max(0.0, (now - oldest).total_seconds())


def _last_hour(session: Session, now: datetime) -> dict[str, int]:
    since = now - timedelta(hours=1)
    received = session.scalar(select(func.count()).where(Instance.received_at >= since))
    finished = dict(
        session.execute(
            select(Instance.state, func.count())
            .where(Instance.finished_at >= since)
            .group_by(Instance.state)
        ).all()
    )
    result = {"received": int(received or 0)}
    for state in (InstanceState.DONE, InstanceState.SKIPPED, InstanceState.FAILED):
        result[state.value] = int(finished.get(state, 0))
    return result


def destinations(session: Session) -> list[DestinationStatus]:
    """Outbound rows grouped by destination, with the most recent error and delivery."""
    per_state: dict[str, dict[str, int]] = {}
    for destination, state, count in session.execute(
        select(Outbound.destination, Outbound.state, func.count()).group_by(
            Outbound.destination, Outbound.state
        )
    ).all():
        states = per_state.setdefault(destination, {s.value: 0 for s in OutboundState})
        states[OutboundState(state).value] = int(count)
    result = []
    for destination, states in sorted(per_state.items()):
        error_row = session.execute(
            select(Outbound.last_error, Outbound.next_attempt_at)
            .where(Outbound.destination == destination, Outbound.last_error.is_not(None))
            .order_by(Outbound.id.desc())
            .limit(1)
        ).first()
        sent_at = session.scalar(
            select(func.max(Outbound.sent_at)).where(Outbound.destination == destination)
        )
        result.append(
            DestinationStatus(
                destination=destination,
                states=states,
                last_error=error_row[0] if error_row else None,
                last_error_at=error_row[1] if error_row else None,
                last_sent_at=sent_at,
            )
        )
    return result


def overview(sessions: sessionmaker[Session]) -> Overview:
    """Everything the dashboard shows, read at one moment."""
    now = utcnow()
    counts = queue.counts(sessions)
    with reading(sessions) as session:
        return Overview(
            counts=counts,
            oldest_queued_age=oldest_queued_age(session, now),
            last_hour=_last_hour(session, now),
            destinations=destinations(session),
            conflicting_copies=queue.conflicting_copies(session),
        )


def latest(sessions: sessionmaker[Session], limit: int, state: str | None = None) -> list[Instance]:
    """The most recently received instances, newest first (optionally of one state)."""
    statement = select(Instance).order_by(Instance.id.desc()).limit(limit)
    if state is not None:
        statement = statement.where(Instance.state == InstanceState(state))
    with reading(sessions) as session:
        return list(session.scalars(statement).all())


@dataclass(frozen=True)
class Detail:
    """One instance, its outbound rows and the objects kept for it in shadow mode."""

    instance: Instance
    outbound: list[Outbound]
    kept: list[Kept]


def detail(sessions: sessionmaker[Session], instance_id: int) -> Detail:
    """One instance and what became of its objects; KeyError when there is no such instance."""
    with reading(sessions) as session:
        instance = session.get(Instance, instance_id)
        if instance is None:
            raise KeyError(instance_id)
        rows = list(
            session.scalars(
                select(Outbound)
                .where(Outbound.instance_id == instance_id)
                .order_by(Outbound.kind, Outbound.destination)
            ).all()
        )
        kept = kept_in_shadow(session, instance_id)
    return Detail(instance, rows, kept)


def latency(sessions: sessionmaker[Session], buckets: Sequence[float] = LATENCY_BUCKETS) -> Latency:
    """Cumulative counts of ``inference_ms`` at or below each bucket bound (seconds)."""
    columns = [
        func.sum(case((Instance.inference_ms <= bound * 1000.0, 1), else_=0)) for bound in buckets
    ]
    statement = select(
        func.count(Instance.inference_ms), func.sum(Instance.inference_ms), *columns
    ).where(Instance.inference_ms.is_not(None))
    with reading(sessions) as session:
        row = session.execute(statement).one()
    count, total_ms, *cumulative = row
    return Latency(
        buckets=[(bound, int(n or 0)) for bound, n in zip(buckets, cumulative, strict=True)],
        count=int(count or 0),
        total_seconds=float(total_ms or 0.0) / 1000.0,
    )
