"""The one claim statement both queues use: instances (workers) and outbound objects (senders).

A claim is one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`` statement; on
PostgreSQL the sub-select takes ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never
take the same row, and on SQLite the ``BEGIN IMMEDIATE`` transaction serialises writers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from osteoflag.db.models import Instance, Outbound

Row = TypeVar("Row", Instance, Outbound)


def claim(
    sessions: sessionmaker[Session],
    table: type[Row],
    due: Sequence[ColumnElement[bool]],
    order: Sequence[InstrumentedAttribute[Any]],
    limit: int,
    values: Mapping[str, object],
) -> list[Row]:
    """Atomically set ``values`` on up to ``limit`` rows of ``table`` matching ``due``, taken
    in ``order``; return them by id, committed."""
    chosen = (
        select(table.id)
        .where(*due)
        .order_by(*order)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = update(table).where(table.id.in_(chosen)).values(**values).returning(table)
    with sessions() as session:
        rows = list(session.scalars(statement).all())
        session.commit()
    return sorted(rows, key=lambda row: row.id)
