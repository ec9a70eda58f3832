"""The sender's own thread: a run every ``sender.interval_seconds``, or at once when woken.

A committed result wakes it (directly in one process, by ``NOTIFY`` across processes), so
an SR leaves as soon as it exists instead of waiting up to a whole interval; the interval
remains the schedule for retries and the safety net for a lost wake-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from pydicom import Dataset
from sqlalchemy import event
from sqlalchemy.orm import Session

from osteoflag.db.models import Instance
from osteoflag.db.queue import Result
from osteoflag.inference.pixels import GreyArray
from osteoflag.inference.worker import OnDone, Record

logger = logging.getLogger(__name__)


class SenderLoop:
    """Runs ``send`` on wake-up or every ``interval`` seconds, one run at a time.

    ``send`` returns True when it delivered something: a run is bounded by a batch size,
    so another run follows at once until one finds nothing more to deliver.
    """

    def __init__(self, send: Callable[[], bool], interval: float) -> None:
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
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """No new run; wait for the one in progress (it is time-boxed by ``run_seconds``)."""
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
                if self._send():
                    self._wake.set()
            except Exception:  # keep the thread alive; the next run retries
                logger.exception("sender run failed", extra={"action": "send"})


def announcing(hook: OnDone, calls: Sequence[Callable[[], None]]) -> OnDone:
    """``hook``, then ``calls`` once the transaction that recorded the result has committed.

    After the commit, not inside ``hook``: a sender woken earlier would not yet see the rows;
    and never after a rollback (a lost lease), when there is nothing new to send.
    """

    def on_done(instance: Instance, source: Dataset, grey: GreyArray, result: Result) -> Record:
        record = hook(instance, source, grey, result)

        def recorded(session: Session) -> None:
            record(session)
            _after_commit(session, calls)

        return recorded

    return on_done


def _after_commit(session: Session, calls: Sequence[Callable[[], None]]) -> None:
    """Run ``calls`` once when ``session``'s transaction commits; never if it rolls back first."""
    pending = [True]

    def committed(_session: Session) -> None:
        if pending and pending.pop():
            for call in calls:
                call()

    def rolled_back(_session: Session) -> None:
        pending.clear()

    event.listen(session, "after_commit", committed)
    event.listen(session, "after_rollback", rolled_back)
