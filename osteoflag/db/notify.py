"""Cross-process wake-ups on PostgreSQL: a listener NOTIFYs, workers LISTEN.

In one process the Storage SCP wakes the worker thread directly. When listeners and
workers are separate processes (``serve --role``), the listener sends ``NOTIFY`` after
each committed store and every worker process keeps one connection on ``LISTEN``, so a
radiograph is picked up at once rather than at the next sweep. A lost notification
costs at most one ``worker.sweep_seconds``: the sweep remains the safety net.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine, text

logger = logging.getLogger(__name__)

CHANNEL = "osteoflag_queued"
_POLL_SECONDS = 1.0
_RETRY_SECONDS = 5.0


def supported(engine: Engine) -> bool:
    """True on PostgreSQL (the only engine with LISTEN/NOTIFY)."""
    return engine.dialect.name == "postgresql"


def notifier(engine: Engine) -> Callable[[], None]:
    """The listener's ``on_queued``: one ``NOTIFY`` per committed store."""

    def notify() -> None:
        with engine.begin() as connection:
            connection.execute(text(f"NOTIFY {CHANNEL}"))

    return notify


def _libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class Subscriber:
    """A thread that calls ``wake`` on every notification until :meth:`stop`."""

    def __init__(self, engine: Engine, wake: Callable[[], None]) -> None:
        self._url = _libpq_url(engine)
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
                with psycopg.connect(self._url, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
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
