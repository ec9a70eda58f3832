"""The sender's own thread: a run every ``sender.interval_seconds``, or at once when woken.

A committed result wakes it (directly in one process, by ``NOTIFY`` across processes), so
an SR leaves as soon as it exists instead of waiting up to a whole interval; the interval
remains the schedule for retries and the safety net for a lost wake-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class SenderLoop:
    """Runs ``send`` on wake-up or every ``interval`` seconds, one run at a time.

    ``send`` returns True when it delivered something: a run is bounded by a batch size,
    so another run follows at once until one finds nothing more to deliver. It is given
    the loop's stop event, set by :meth:`stop`, and must end its run soon after.
    """

    def __init__(self, send: Callable[[threading.Event], bool], interval: float) -> None:
        self._send = send
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="osteoflag-send", daemon=True)

    def wake(self) -> None:
        """Ask for a run now (a run in progress is followed by another one)."""
        self._wake.set()

    @property
    def running(self) -> bool:
        """True while the sender thread is alive (``/healthz``)."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread with a run at once: what a previous process left is due now."""
        self._wake.set()
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """No new run; the one in progress ends before its next object (``send`` is given
        the stop event), and is waited for up to ``timeout`` seconds."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self._send(self._stop):
                    self._wake.set()
            except Exception:  # keep the thread alive; the next run retries
                logger.exception("sender run failed", extra={"action": "send"})
