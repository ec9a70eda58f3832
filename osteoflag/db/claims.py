"""The one claim statement both queues use: instances (workers) and outbound objects (senders).

A claim is one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`` statement; on
PostgreSQL the sub-select takes ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never
take the same row, and on SQLite the ``BEGIN IMMEDIATE`` transaction serialises writers.
Which rows are due, and when the claim's lease ends, are judged by the database's clock
(:mod:`osteoflag.db.clock`), read in the claim's own transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from osteoflag.db.clock import database_now
from osteoflag.db.models import Instance, Outbound

Row = TypeVar("Row", Instance, Outbound)


def claim(
    sessions: sessionmaker[Session],
    table: type[Row],
    due: Sequence[ColumnElement[bool]],
    order: Sequence[InstrumentedAttribute[Any]],
    limit: int,
    values: Callable[[datetime], Mapping[str, object]],
    now: datetime | None = None,
) -> list[Row]:
    """Atomically set ``values(now)`` on up to ``limit`` rows of ``table`` matching ``due``
    whose ``next_attempt_at`` has come, taken in ``order``; return them by id, committed.
    ``now`` is the database's clock unless given (tests that move time on)."""
    with sessions() as session:
        moment = now or database_now(session)
        chosen = (
            select(table.id)
            .where(table.next_attempt_at <= moment, *due)
            .order_by(*order)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        statement = (
            update(table).where(table.id.in_(chosen)).values(**values(moment)).returning(table)
        )
        rows = list(session.scalars(statement).all())
        session.commit()
    return sorted(rows, key=lambda row: row.id)
