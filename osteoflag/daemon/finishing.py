"""The worker's one extension point: what finishing an instance produces, and when.

The worker records each outcome; a :class:`Finishing` hook (``osteoflag.daemon.results`` in
the daemon, :class:`Silent` in tests and benchmarks) builds the objects that go with it, and
its :data:`Record` joins the outcome's transaction so both commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from osteoflag.db import queue
from osteoflag.db.models import Instance
from osteoflag.inference.pixels import GreyArray

#: What a hook returns: run in the transaction that records the outcome (e.g. to add the
#: outbound rows of the objects the hook wrote), so both commit together or not at all.
Record = Callable[[Session], None]


class Finishing(Protocol):
    """How an instance is finished: the worker's one extension point, called in this order.

    1. :meth:`done` (classified) or :meth:`refused` (a readable instance ``skipped`` or
       ``failed``), before any database work: building and writing files takes tens of ms,
       and on SQLite a transaction held meanwhile would stall every C-STORE. Each returns
       what to record, or None.
    2. One transaction: the outcome (``done`` / ``skipped`` / ``failed``) plus that record.
    3. :meth:`committed`, after that transaction commits (never after a rollback), e.g. to
       wake the sender for the new objects.

    An error from ``done`` or its record fails the instance; from ``refused`` or its record,
    it is noted in the reason (an error not osteoflag's with the source's values redacted).
    Either way it stays with that instance: its batch-mates finish as if it had not happened.
    """

    def done(
        self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record | None:
        """``grey`` is the image the model saw, in 8 bits; ``result.made_at`` dates the result."""

    def refused(
        self, instance: Instance, source: Dataset, reason: str, made_at: datetime
    ) -> Record | None:
        """``reason`` is the one recorded on the instance."""

    def committed(self) -> None:
        """The outcome and its record are durable."""


class Silent:
    """:class:`Finishing` that produces nothing (tests, benchmarks)."""

    def done(
        self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record | None:
        return None

    def refused(
        self, instance: Instance, source: Dataset, reason: str, made_at: datetime
    ) -> Record | None:
        return None

    def committed(self) -> None:
        return None
