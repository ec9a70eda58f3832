"""Cross-process wake-ups on PostgreSQL: producers NOTIFY, consumers LISTEN.

In one process the Storage SCP wakes the worker thread directly, and a committed result
wakes the sender. When they are separate processes (``serve --role``), the listener sends
``NOTIFY`` on :data:`QUEUED` after each committed store and a worker on :data:`OUTBOUND`
after each committed result; every worker (sender) process keeps one connection on
``LISTEN``, so work is picked up at once rather than at the next sweep (sender run). A lost
notification costs at most one ``worker.sweep_seconds`` (``sender.interval_seconds``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)

QUEUED = "osteoflag_queued"
OUTBOUND = "osteoflag_outbound"
_POLL_SECONDS = 1.0
_RETRY_SECONDS = 5.0
#: libpq settings of the LISTEN connection: a connect that does not hang on an unanswering
#: host, and TCP keepalives, so a connection left half-open by a network partition (no reset
#: ever arrives) fails within about a minute and is made again, instead of leaving this
#: process without wake-ups, silently, until it restarts.
_CONNECTION: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def supported(engine: Engine) -> bool:
    """True on PostgreSQL (the only engine with LISTEN/NOTIFY)."""
    return engine.dialect.name == "postgresql"


def notifier(engine: Engine, channel: str = QUEUED) -> Callable[[], None]:
    """One ``NOTIFY channel`` per call, e.g. the listener's ``on_queued``.

    It runs after the work was committed, so a failure here must not fail the store or
    the result: it is logged and the sweep (sender run) picks the work up later.
    """

    def notify() -> None:
        try:
            with engine.begin() as connection:
                connection.execute(text(f"NOTIFY {channel}"))
        except SQLAlchemyError as exc:
            logger.warning(
                "notification not sent; the sweep will pick the work up",
                extra={"action": "notify", "channel": channel, "error": type(exc).__name__},
            )

    return notify


def listen_conninfo(engine: Engine) -> str:
    """libpq's connection string for ``engine``'s database, with :data:`_CONNECTION`'s
    settings: what the LISTEN connection is made with."""
    from psycopg.conninfo import make_conninfo  # the "postgres" extra

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return make_conninfo(url, **_CONNECTION)


class Subscriber:
    """A thread that calls ``wake`` on every notification until :meth:`stop`."""

    def __init__(self, engine: Engine, wake: Callable[[], None], channel: str = QUEUED) -> None:
        self._conninfo = listen_conninfo(engine)
        self._channel = channel
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="osteoflag-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        import psycopg  # the "postgres" extra; only imported where PostgreSQL is used

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {self._channel}")
                    self._wake()  # anything queued while we were not listening
                    while not self._stop.is_set():
                        for _ in connection.notifies(timeout=_POLL_SECONDS):
                            self._wake()
            except psycopg.Error as exc:
                logger.warning(
                    "queue notifications interrupted; sweeping meanwhile",
                    extra={"action": "listen", "error": str(exc)},
                )
                self._stop.wait(_RETRY_SECONDS)
