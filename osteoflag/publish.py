"""Putting a folder a command wrote (a model bundle, a labelled set) in place whole.

Whoever reads the final name (the daemon's ``model.bundle``, ``validate --data``) finds the
previous complete folder or the new one, never a half-written one. The folder is written under
a hidden sibling name (:func:`staging`), removed again when writing fails, and renamed into
place by :func:`publish`; :func:`rewriting` changes an existing folder the same way, through
a copy. Replacing a folder takes two renames: the old one goes aside to
``NAME.previous-HOST-PID``, the new one takes its name, then the old one is deleted. A failed
second rename puts the old folder back; a crash between the two leaves it under that name beside
the empty place, to be renamed back by hand. The new folder's files and folders reach the disk
(``fsync``) before the rename, and the rename itself after it, so a power loss too leaves the old
folder or the whole new one under the name.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from osteoflag.errors import UsageError
from osteoflag.fsync import sync_path

logger = logging.getLogger(__name__)


def _target(out: Path) -> Path:
    """Where ``out`` really is: through a symlink (``current -> v7``) the folder it names is
    replaced, the link kept, as writing files through it did."""
    return out.resolve()


def _writer() -> str:
    """This process as the names of its folders give it: the host as well as the process id,
    since hosts sharing a folder (a network share of bundles) reuse each other's ids."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _staging_path(out: Path) -> Path:
    """The hidden sibling a folder for ``out`` is written under by this process."""
    target = _target(out)
    return target.with_name(f".{target.name}.partial-{_writer()}")


def _previous_path(out: Path) -> Path:
    """The sibling the folder at ``out`` is moved to while this process replaces it."""
    target = _target(out)
    return target.with_name(f"{target.name}.previous-{_writer()}")


def _is_running(pid: int) -> bool:
    """True when a process with this id exists on this machine (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        pass
    return True


def _remove_abandoned(out: Path) -> None:
    """Remove the staging folders for ``out`` of this host's writers that no longer run (killed
    mid-way): hidden and never loaded, they would otherwise stay for good. A running writer's
    is left, and so is another host's, whose processes this one cannot see: that host's next
    write judges it."""
    target = _target(out)
    prefix = f".{target.name}.partial-"
    for path in target.parent.glob(f"{glob.escape(prefix)}*"):
        host, _, pid = path.name.removeprefix(prefix).rpartition("-")
        if (
            host != socket.gethostname()
            or not pid.isdigit()
            or _is_running(int(pid))
            or path.is_symlink()
            or not path.is_dir()
        ):
            continue  # another host's, not a folder a writer made, or its writer is at work
        shutil.rmtree(path, ignore_errors=True)
        logger.info(
            "abandoned staging folder removed", extra={"action": "publish", "path": str(path)}
        )


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A new empty folder beside ``out`` to write into; on leaving the block it is removed,
    unless :func:`publish` moved it into place (an error, or a writer deciding not to publish,
    leaves nothing behind). Folders of earlier writers killed mid-way go first."""
    _remove_abandoned(out)
    folder = _staging_path(out)
    shutil.rmtree(folder, ignore_errors=True)  # left by a killed process with the same id
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def rewriting(folder: Path) -> Iterator[Path]:
    """A copy of ``folder`` to change (a file added, a manifest re-pinned), put in its place
    with :func:`publish` when the block ends normally and removed when it raises: the folder
    is never seen half changed."""
    with staging(folder) as copy:
        shutil.copytree(folder, copy, dirs_exist_ok=True)
        yield copy
        publish(copy, folder, replace=True)


def publish(folder: Path, out: Path, *, replace: bool = False) -> None:
    """Rename the complete ``folder`` to ``out``.

    Without ``replace``, an ``out`` that exists (made since the command checked) is refused.
    With it, an existing ``out`` is moved aside first and deleted once the new folder is in
    place; should the new one not take its name, the old one is put back.
    """
    target = _target(out)
    _sync_tree(folder)
    if not target.exists():
        os.rename(folder, target)
        sync_path(target.parent)
        return
    if not replace:
        raise UsageError(f"{out}: appeared while the new folder was written; choose another")
    aside = _previous_path(out)
    os.rename(target, aside)
    try:
        os.rename(folder, target)
    except BaseException:
        os.rename(aside, target)
        raise
    sync_path(target.parent)
    try:
        shutil.rmtree(aside)
    except OSError as exc:
        logger.warning(
            "previous folder not removed",
            extra={"action": "publish", "path": str(aside), "error": str(exc)},
        )


def _sync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to the disk, so the rename that publishes it
    never names files whose data a power loss took."""
    for path in sorted(folder.rglob("*")):
        if not path.is_symlink():
            sync_path(path)
    sync_path(folder)
