"""Which parts of the daemon one ``osteoflag serve`` process runs.

A single machine runs them all (``all``, the default). Past one machine, listeners,
inference workers and senders run as separate processes, possibly on separate hosts,
sharing one PostgreSQL database and one storage path: only the queue connects them.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """``osteoflag serve --role``."""

    LISTENER = "listener"
    WORKER = "worker"
    SENDER = "sender"
    ALL = "all"

    def runs(self, part: Role) -> bool:
        """True when a process in this role runs ``part`` (``all`` runs every part)."""
        return self is Role.ALL or self is part
