"""The one clock that claims, leases, retries and heartbeats are stamped and judged by.

Processes on several hosts may share one PostgreSQL database, and their clocks differ: a
lease stamped by one host's clock and judged by another's would lapse early (a live claim
taken over) or late (due rows left waiting). The database's clock is the one they all read.
SQLite runs inside the process, on one host, so its clock is this host's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from osteoflag.db.models import utcnow


def database_now(session: Session) -> datetime:
    """The database's clock, in UTC. On PostgreSQL the start of this statement, not of the
    transaction (``now()``), so a stamp taken late in a long transaction is not behind."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    now: datetime = session.execute(select(func.statement_timestamp())).scalar_one()
    return datetime.astimezone(now, UTC)
