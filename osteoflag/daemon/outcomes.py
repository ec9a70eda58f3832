"""Recording what became of each claimed instance, one at a time and never for its batch.

The worker hands every outcome here: ``done`` with the finishing hook's record, ``skipped`` or
``failed`` with the reason (and, when configured, the hook's Undetermined report), or back to
the queue after a transient error. Each is committed in its own transaction, only while the
worker still holds the claim. An unexpected error stays with its instance
(:meth:`Outcomes.isolated`), and what a batch still holds when the database cannot take an
outcome is handed back (:meth:`Outcomes.hand_back`) rather than left to wait out its lease and
count as a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.daemon.finishing import Finishing, Record
from osteoflag.db import queue
from osteoflag.db.engine import database_errors
from osteoflag.db.models import Instance, InstanceState, utcnow
from osteoflag.errors import DatabaseUnavailable, OsteoflagError, TransientError
from osteoflag.inference.pixels import GreyArray
from osteoflag.pacs.derived import COPIED
from osteoflag.pacs.values import redact

logger = logging.getLogger(__name__)

#: How long an instance waits after a transient error (a full disk) before it is tried again.
TRANSIENT_RETRY_SECONDS = 60.0


def unexpected(exc: Exception, source: Dataset | None) -> str:
    """``exc`` for a reason: ours as it is; another's message with the source's values
    redacted (a library may quote an attribute's value)."""
    if isinstance(exc, OsteoflagError):
        return str(exc)
    kind = type(exc)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    detail = str(exc) if source is None else redact(str(exc), source, COPIED)
    return f"unexpected {name}: {detail}"


class Outcomes:
    """Records the outcomes of one worker's claims (``owner``) with its finishing hook."""

    def __init__(self, sessions: sessionmaker[Session], owner: str, finishing: Finishing) -> None:
        self._sessions = sessions
        self._owner = owner
        self._finishing = finishing
        #: The claimed batch's instances whose outcome is not recorded yet, by id.
        self._held: dict[int, Instance] = {}

    def hold(self, claimed: Iterable[Instance]) -> None:
        """A new batch: what :meth:`hand_back` returns unless an outcome is recorded first."""
        self._held = {instance.id: instance for instance in claimed}

    @contextmanager
    def isolated(self, instance: Instance, source: Dataset | None = None) -> Iterator[None]:
        """One instance's step: an unexpected error fails that instance only; an outcome the
        database could not take (:class:`TransientError`) is left for :meth:`hand_back`."""
        try:
            yield
        except TransientError as exc:
            logger.warning(
                "outcome not recorded, handed back with the batch",
                extra={
                    "action": "hand_back",
                    "sop_instance_uid": instance.sop_instance_uid,
                    "reason": str(exc),
                },
            )
        except Exception as exc:
            self.refuse(instance, InstanceState.FAILED, unexpected(exc, source))

    def hand_back(self) -> None:
        """Re-queue what the batch still holds, in :data:`TRANSIENT_RETRY_SECONDS`, without
        counting the attempt: left claimed, it would wait out its lease and then count as a
        crash (``worker.max_attempts``), though nothing was wrong with it."""
        held, self._held = list(self._held.values()), {}
        if not held:
            return
        delay = timedelta(seconds=TRANSIENT_RETRY_SECONDS)
        reason = "outcome not recorded, will retry"
        uids = [instance.sop_instance_uid for instance in held]
        try:
            with database_errors("handing back a batch"), self._sessions() as session:
                for instance in held:
                    queue.retry_later(session, instance.id, self._owner, reason, delay)
                session.commit()
        except OsteoflagError as exc:
            logger.error(
                "batch not handed back, its claims wait for their lease",
                extra={"action": "hand_back", "sop_instance_uids": uids, "reason": str(exc)},
            )
            return
        logger.warning(
            "instances handed back",
            extra={
                "action": "hand_back",
                "sop_instance_uids": uids,
                "retry_seconds": TRANSIENT_RETRY_SECONDS,
            },
        )

    def store(
        self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> None:
        """The hook's ``done``, then ``done`` plus its record; ``failed`` if either fails."""
        try:
            record = self._finishing.done(instance, source, grey, result)
            marked = self._commit(
                instance,
                lambda session: queue.complete(session, instance.id, self._owner, result),
                record,
            )
        except TransientError as exc:
            self.retry_later(instance, f"result not recorded, will retry: {exc}")
            return
        except Exception as exc:  # the hook is an extension point: any error fails this one
            reason = f"result not recorded: {unexpected(exc, source)}"
            self.refuse(instance, InstanceState.FAILED, reason)
            return
        if marked:
            logger.info(
                "instance classified",
                extra={
                    "action": "classified",
                    "sop_instance_uid": instance.sop_instance_uid,
                    "probability": round(result.probability, 6),
                    "label": result.label,
                    "model": result.model,
                    "inference_ms": round(result.inference_ms, 1),
                },
            )

    def retry_later(self, instance: Instance, reason: str) -> None:
        """Re-queue after a transient error (a full disk): it clears by itself, so the
        instance is tried again in :data:`TRANSIENT_RETRY_SECONDS` instead of failing."""
        delay = timedelta(seconds=TRANSIENT_RETRY_SECONDS)
        marked = self._commit(
            instance,
            lambda session: queue.retry_later(session, instance.id, self._owner, reason, delay),
            None,
        )
        if marked:
            logger.warning(
                "instance re-queued after a transient error",
                extra={
                    "action": "retry",
                    "sop_instance_uid": instance.sop_instance_uid,
                    "reason": reason,
                    "retry_seconds": TRANSIENT_RETRY_SECONDS,
                },
            )

    def refuse(
        self,
        instance: Instance,
        state: InstanceState,
        reason: str,
        source: Dataset | None = None,
    ) -> None:
        """The hook's ``refused`` (for a readable ``source``), then the outcome with ``reason``
        plus its record; a hook error is noted in the reason instead."""
        made_at = utcnow()
        record: Record | None = None
        if source is not None:
            try:
                record = self._finishing.refused(instance, source, reason, made_at)
            except Exception as exc:  # the hook decodes again: any error, not only ours
                reason = f"{reason}; no report produced: {unexpected(exc, source)}"
        try:
            marked = self._commit(instance, self._marking(instance, state, reason, made_at), record)
        except DatabaseUnavailable:  # not the record's fault: the whole outcome waits
            raise
        except Exception as exc:  # the record is the hook's too
            reason = f"{reason}; no report produced: {unexpected(exc, source)}"
            marked = self._commit(instance, self._marking(instance, state, reason, made_at), None)
        if marked:
            logger.warning(
                "instance %s",
                state.value,
                extra={
                    "action": state.value,
                    "sop_instance_uid": instance.sop_instance_uid,
                    "reason": reason,
                },
            )

    def _marking(
        self, instance: Instance, state: InstanceState, reason: str, made_at: datetime
    ) -> Callable[[Session], bool]:
        return lambda session: queue.refuse(
            session, instance.id, self._owner, state, reason, made_at
        )

    def _commit(
        self, instance: Instance, mark: Callable[[Session], bool], record: Record | None
    ) -> bool:
        """``mark`` (the outcome) plus ``record``, in one transaction, then the hook's
        ``committed``; False, with nothing changed, if the lease was lost. A database error
        is raised as :class:`DatabaseUnavailable` (or :class:`PermanentError`), nothing changed."""
        doing = f"recording {instance.sop_instance_uid}"
        with database_errors(doing), self._sessions() as session:
            if not mark(session):
                session.rollback()
                self._held.pop(instance.id, None)
                self._lease_lost(instance)
                return False
            if record is not None:
                record(session)
            session.commit()
        self._held.pop(instance.id, None)
        self._finishing.committed()
        return True

    def _lease_lost(self, instance: Instance) -> None:
        logger.warning(
            "lease lost before the outcome was recorded",
            extra={"action": "lease_lost", "sop_instance_uid": instance.sop_instance_uid},
        )
