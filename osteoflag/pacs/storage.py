"""Durable files: where an instance goes on disk and how it gets there without tearing.

A file is written to a temporary name in its final folder, fsynced, renamed over the
final name and the folder fsynced, so after a crash either the whole file or no file
exists. Files and folders are owner-only: they hold patient data.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

from osteoflag.errors import PermanentError
from osteoflag.fsync import sync_path

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: Name prefix of a file being written (:func:`write_atomically`); a crash may leave one.
PARTIAL_PREFIX = ".partial-"
FILE_MODE = 0o600
FOLDER_MODE = 0o700


def check_uid(value: str, keyword: str) -> str:
    """Return ``value`` if it is a valid UID (PS3.5 9.1), else raise naming ``keyword``.

    UIDs become file names, so a hostile one must never reach the filesystem.
    """
    if not value or len(value) > 64 or not _UID.fullmatch(value):
        raise PermanentError(f"{keyword} {value[:80]!r} is not a valid UID")
    return value


def instance_path(root: Path, sop_instance_uid: str, data_set_digest: str) -> Path:
    """Where an instance lives: fanned out by a hash prefix so no folder grows huge, and
    named by its data set too, so two associations storing different data sets under one
    SOP Instance UID at the same moment never write over each other's file."""
    check_uid(sop_instance_uid, "SOPInstanceUID")
    fan = hashlib.sha1(sop_instance_uid.encode("ascii"), usedforsecurity=False).hexdigest()[:2]
    return root / fan / f"{sop_instance_uid}.{data_set_digest[:16]}.dcm"


def conflict_path(original: Path, data_set_digest: str) -> Path:
    """Where a different copy of an already accepted instance is kept: beside the first."""
    return original.with_name(f"{original.stem}.conflict-{data_set_digest[:16]}.dcm")


def named_uids(path: Path) -> set[str]:
    """The SOP Instance UIDs a received file's name may stand for: its stem without a
    conflicting copy's suffix, with and without a data-set digest (older files have none)."""
    stem = path.name.removesuffix(".dcm").split(".conflict-", 1)[0]
    return {stem, stem.rsplit(".", 1)[0]}


def conflict_copies(original: Path) -> list[Path]:
    """The different copies kept beside ``original``."""
    return sorted(original.parent.glob(f"{original.stem}.conflict-*.dcm"))


def data_set_digest(data_set: bytes | memoryview) -> str:
    """SHA-256 of an encoded data set: what two copies of an instance are compared by."""
    return hashlib.sha256(data_set).hexdigest()


def stored_data_set_digest(path: Path) -> str | None:
    """:func:`data_set_digest` of the data set in a file we wrote (after its File Meta
    Information, whose group length comes first, PS3.10 7.1); None when the file is gone."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if data[128:136] != b"DICM\x02\x00\x00\x00":  # not ours: compared whole, so it differs
        return data_set_digest(data)
    (meta_length,) = struct.unpack_from("<I", data, 140)
    return data_set_digest(data[144 + meta_length :])


def free_bytes(path: Path) -> int:
    """Free bytes on the volume holding ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either all of it or nothing."""
    path.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_path(path.parent)
