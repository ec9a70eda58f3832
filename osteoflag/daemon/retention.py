"""Retention: remove received and produced files once their work is over; keep the rows.

Patient data should not stay on this machine longer than needed. An instance's files
(the received image, its SR and summary image) are removed when it was received more
than ``[retention] max_age_days`` ago, it is finished (``done``, ``skipped`` or
``failed``) and none of its outbound objects is still ``pending``. Anything queued,
processing or waiting for delivery is never touched. The rows stay for the audit
trail: ``removed_at`` is set on the instance and its outbound rows and a
``files_removed`` event is appended, so no later step tries to read a missing file.

Files no row names are removed too, once :data:`ORPHAN_AGE` old (:func:`remove_orphans`): a
store interrupted between writing its file and committing its row (a crash, or a database
error answered with a failure status that the sender never retried) leaves one, and a crash in
the middle of a write leaves a temporary ``.partial-`` file. Produced objects no outbound row
and no shadow-mode record names go the same way (:func:`remove_unrecorded`): the worker writes
them before recording its outcome, which a lost lease or a database error can prevent.

A file that cannot be removed (immutable, another owner's, on a read-only mount) is logged and
stays, its instance unmarked, to be tried again next run; the run goes on with the others.

The daemon schedules all three every ``[retention] interval_seconds``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Mapped, Session, sessionmaker

from osteoflag.config import RetentionSettings
from osteoflag.db.engine import reading
from osteoflag.db.models import Event, Instance, InstanceState, Outbound, OutboundState, utcnow
from osteoflag.db.outbound import kept_in_shadow, kept_until_retention
from osteoflag.pacs.storage import PARTIAL_PREFIX, conflict_copies, named_uids

logger = logging.getLogger(__name__)

FINISHED = (InstanceState.DONE, InstanceState.SKIPPED, InstanceState.FAILED)
#: How old a received file no queue row names must be before it is removed: far longer than
#: a store takes from writing its file to committing its row, or a sender to retry it.
ORPHAN_AGE = timedelta(days=1)
_LOOKUP_CHUNK = 500
#: Name prefix of an orphan being removed (:func:`_remove_orphan`); a crash may leave one.
ASIDE_PREFIX = ".orphan-"
#: What a crash may leave beside received files: a torn write, an orphan set aside.
_LEFTOVERS = (PARTIAL_PREFIX, ASIDE_PREFIX)


@dataclass(frozen=True)
class RetentionReport:
    """What one retention run removed."""

    instances: int = 0
    files: int = 0


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _cannot_remove(exc: OSError, **where: object) -> None:
    """Log a file retention cannot remove (immutable, another owner's, a read-only mount): it
    stays, is tried again next run, and never stops the run for the files after it."""
    logger.warning(
        "retention cannot remove a file",
        extra={"action": "retention", "file": exc.filename, "error": exc.strerror, **where},
    )


def _each(paths: Iterable[Path], remove: Callable[[Path], bool]) -> int:
    """How many of ``paths`` ``remove`` removed; one it cannot remove is logged and left."""
    removed = 0
    for path in paths:
        try:
            removed += remove(path)
        except OSError as exc:
            _cannot_remove(exc)
    return removed


def remove_expired(
    sessions: sessionmaker[Session], settings: RetentionSettings, now: datetime | None = None
) -> RetentionReport:
    """Remove the files of up to ``batch_size`` expired, delivered instances; mark their rows.

    Selection, removal and marking happen in one write transaction (``BEGIN
    IMMEDIATE`` on SQLite; on PostgreSQL the instance's and its outbound objects' rows
    locked, their states checked again once locked), so a concurrent ``requeue`` cannot
    make an object pending again between the check and the removal. A crash
    after unlinking but before the commit only leaves rows to be marked next run.
    """
    moment = now or utcnow()
    cutoff = moment - timedelta(days=settings.max_age_days)
    undelivered = exists().where(
        Outbound.instance_id == Instance.id, Outbound.state == OutboundState.PENDING
    )
    expired = (
        select(Instance)
        .where(
            Instance.removed_at.is_(None),
            Instance.state.in_(FINISHED),
            Instance.received_at < cutoff,
            ~undelivered,
        )
        .order_by(Instance.id)
        .limit(settings.batch_size)
        .with_for_update(skip_locked=True)
    )
    instances = files = 0
    with sessions() as session:
        for instance in session.scalars(expired).all():
            # Locked and checked again: a requeue committed since the selection (its rows
            # were not locked by it on PostgreSQL) would otherwise send a removed file.
            outbound = session.scalars(
                select(Outbound).where(Outbound.instance_id == instance.id).with_for_update()
            ).all()
            if any(row.state is OutboundState.PENDING for row in outbound):
                continue
            source = Path(instance.file_path)
            copies = (str(path) for path in conflict_copies(source))
            kept = (str(item.path) for item in kept_in_shadow(session, instance.id))
            paths = {instance.file_path, *copies, *kept, *(row.file_path for row in outbound)}
            try:
                removed = sum(_unlink(Path(path)) for path in sorted(paths))
            except OSError as exc:  # left unmarked: its files are tried again next run
                _cannot_remove(exc, instance_id=instance.id)
                continue
            instance.removed_at = moment
            for row in outbound:
                row.removed_at = moment
            session.add(
                Event(instance_id=instance.id, action="files_removed", detail=f"{removed} files")
            )
            instances += 1
            files += removed
        session.commit()
    if instances:
        logger.info(
            "retention removed files",
            extra={"action": "retention", "instances": instances, "files": files},
        )
    return RetentionReport(instances=instances, files=files)


def _present(
    session: Session, column: Mapped[str], uids: Iterable[str], *where: ColumnElement[bool]
) -> set[str]:
    """The UIDs among ``uids`` that some row (meeting ``where``) holds in ``column``, looked up
    in chunks."""
    wanted = sorted(set(uids))
    present: set[str] = set()
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        chunk = wanted[start : start + _LOOKUP_CHUNK]
        present.update(session.scalars(select(column).where(column.in_(chunk), *where)))
    return present


def _written_before(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:  # renamed or removed since it was listed (a write finishing)
        return False


def _remove_orphan(path: Path, cutoff: float) -> bool:
    """Remove ``path`` unless it was written again since it was listed (by a store, or by the
    worker's next attempt at an outcome). It is renamed aside first and the file so caught
    checked once more: a writer that wrote the path in between left a fresh file (names come
    from the content or the source, so the same object), which goes back; one writing after
    the rename finds the path free."""
    aside = path.with_name(ASIDE_PREFIX + path.name)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if not _written_before(aside, cutoff):
        os.replace(aside, path)
        return False
    return _unlink(aside)


def _old_files(root: Path, cutoff: float) -> list[Path]:
    """The ``.dcm`` and temporary files in the folders of ``root`` last written before
    ``cutoff``. Only folders osteoflag made are looked in: a symbolic link among them leads out
    of storage, to files no row could name."""
    if not root.is_dir():
        return []
    return [
        path
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.is_symlink()  # its files are not ours to judge
        for path in sorted(folder.iterdir())
        if (path.name.startswith(_LEFTOVERS) or path.suffix == ".dcm")
        and _written_before(path, cutoff)
    ]


def _sweep(
    sessions: sessionmaker[Session],
    root: Path,
    now: datetime | None,
    unnamed: Callable[[Session, list[Path]], list[Path]],
    what: str,
    action: str,
) -> int:
    """Remove the temporary files and the files ``unnamed`` picks (those no row names) among
    the files in ``root``'s folders last written more than :data:`ORPHAN_AGE` before ``now``;
    a file written again since it was listed is kept (:func:`_remove_orphan`). Any removal is
    logged as ``retention removed {what}``, under ``action``."""
    cutoff = ((now or utcnow()) - ORPHAN_AGE).timestamp()
    old = _old_files(root, cutoff)
    leftovers = [path for path in old if path.name.startswith(_LEFTOVERS)]
    named = [path for path in old if not path.name.startswith(_LEFTOVERS)]
    with reading(sessions) as session:
        orphans = unnamed(session, named)
    removed = _each((path for path in leftovers if _written_before(path, cutoff)), _unlink)
    removed += _each(orphans, lambda path: _remove_orphan(path, cutoff))
    if removed:
        logger.warning("retention removed %s", what, extra={"action": action, "files": removed})
    return removed


def remove_orphans(
    sessions: sessionmaker[Session], incoming: Path, now: datetime | None = None
) -> int:
    """Remove the received files (and temporary ones) in ``incoming`` that no queue row names
    and that were last written more than :data:`ORPHAN_AGE` before ``now``; return how many.
    A file is kept when any UID its name may stand for has a row whose files retention has not
    removed, whatever that row's path, or when it was written again after it was listed. A
    file naming a removed row's UID is a conflicting copy stored while retention removed its
    instance (later copies are acknowledged, not stored), so it goes."""

    def unnamed(session: Session, received: list[Path]) -> list[Path]:
        uids = (uid for path in received for uid in named_uids(path))
        known = _present(session, Instance.sop_instance_uid, uids, Instance.removed_at.is_(None))
        return [path for path in received if not named_uids(path) & known]

    return _sweep(sessions, incoming, now, unnamed, "files no queue row names", "retention_orphans")


def remove_unrecorded(
    sessions: sessionmaker[Session], outgoing: Path, now: datetime | None = None
) -> int:
    """Remove the produced objects (and temporary files) in ``outgoing`` that no outbound row
    and no shadow-mode record names, last written more than :data:`ORPHAN_AGE` before ``now``;
    return how many.

    The worker writes an instance's objects before the transaction that records them, so an
    outcome it could not record (a lost lease, a database error, a crash) leaves them behind;
    an object no destination takes is not built at all. Their names are derived from the
    source, so a later attempt may write the same file again: it is kept when written since it
    was listed, as in :func:`remove_orphans`.
    """

    def unnamed(session: Session, produced: list[Path]) -> list[Path]:
        named = _present(session, Outbound.sop_instance_uid, (path.stem for path in produced))
        candidates = [path for path in produced if path.stem not in named]
        if not candidates:
            return []
        kept = {str(item.path) for item in kept_until_retention(session)}
        return [path for path in candidates if str(path) not in kept]

    return _sweep(
        sessions, outgoing, now, unnamed, "produced files no row names", "retention_unrecorded"
    )
