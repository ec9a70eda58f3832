"""Heartbeats: which process holds a claim, and when a holder is taken for dead.

Every ``osteoflag serve`` process has an owner name, written on the rows it claims
(``lease_owner``), and a row in ``processes`` whose ``heartbeat_at`` it renews every
:data:`HEARTBEAT_SECONDS`. A process silent for :data:`STALE_SECONDS` (a SIGKILL, a power
cut, a lost host) is dead to the others: the next heartbeat of any live process, or of its
own successor, releases its claims, so a restart loses seconds, not the minutes of the
claims' leases. The leases stay as the bound for a process that is alive but stuck.

Heartbeats are stamped and judged with one clock, the database's
(:func:`osteoflag.db.clock.database_now`), as claims and leases are: a host whose clock is
behind another's must not look dead to it at every beat.

A process judges others only while its own heartbeats get through: after losing the
database for longer than :data:`STALE_SECONDS` everyone looks dead, and the first beat
back must not release the claims of processes that are merely reconnecting too.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db import outbound, queue
from osteoflag.db.clock import database_now
from osteoflag.db.models import Instance, Outbound, Process

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 15.0


def owner_name(role: str) -> str:
    """A name no other process has had: role, host, pid and a random tag."""
    return f"{role}:{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


class Heartbeat:
    """One process's heartbeat, and the release of dead processes' claims."""

    def __init__(
        self, sessions: sessionmaker[Session], owner: str, role: str, max_attempts: int
    ) -> None:
        self._sessions = sessions
        self.owner = owner
        self._role = role
        self._max_attempts = max_attempts
        self._last_beat: float | None = None

    def beat(self) -> None:
        """Record that this process is alive; then release the claims of dead ones."""
        with self._sessions() as session:
            stamp = database_now(session)
            session.merge(Process(owner=self.owner, role=self._role, heartbeat_at=stamp))
            session.commit()
        now = time.monotonic()
        connected = self._last_beat is None or now - self._last_beat < STALE_SECONDS
        self._last_beat = now
        if connected:
            self.release_dead()

    def release_dead(self) -> int:
        """Release the claims of every process whose heartbeat is stale; forget those
        processes. Returns how many claims were released."""
        with self._sessions() as session:
            cutoff = database_now(session) - timedelta(seconds=STALE_SECONDS)
            dead = list(session.scalars(select(Process.owner).where(Process.heartbeat_at < cutoff)))
        if not dead:
            return 0
        instances = queue.recover(
            self._sessions, self._max_attempts, Instance.lease_owner.in_(dead)
        )
        objects = outbound.release_claims(self._sessions, Outbound.lease_owner.in_(dead))
        with self._sessions() as session:
            session.execute(delete(Process).where(Process.owner.in_(dead)))
            session.commit()
        logger.warning(
            "released the claims of stopped processes",
            extra={
                "action": "release_dead",
                "processes": len(dead),
                "instances": instances,
                "outbound": objects,
            },
        )
        return instances + objects

    def stop(self) -> None:
        """Forget this process, unless it still holds claims (a batch that outlasted the
        stop's grace): then its row stays and goes stale, so another process releases them
        as a crashed one's, instead of their leases running out."""
        with self._sessions() as session:
            held = (
                select(Instance.id)
                .where(Instance.lease_owner == self.owner)
                .union_all(select(Outbound.id).where(Outbound.lease_owner == self.owner))
            )
            if session.execute(held.limit(1)).first() is None:
                session.execute(delete(Process).where(Process.owner == self.owner))
                session.commit()
