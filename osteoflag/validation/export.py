"""``feedback export``: the cases radiologists labelled, as a set ``validate`` and ``adapt`` read.

The folder holds ``images/<SOPInstanceUID>.dcm`` (the received files, copied from storage,
owner-only like storage itself: they carry patient data) and ``labels.csv`` with ``file``,
``sop_instance_uid``, ``label`` (each case's latest reading: fracture, nofracture or unsure,
which the readers leave out) and ``group`` (the Study Instance UID, so the views of one study
stay on one side of every fold; a source value that is no UID is never written there). It is
written under a temporary name and renamed when complete; cases whose file retention already
removed are counted, not exported.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from osteoflag import publish
from osteoflag.db.engine import reading
from osteoflag.db.feedback import current
from osteoflag.db.models import FeedbackLabel
from osteoflag.errors import PermanentError, UsageError
from osteoflag.pacs.storage import check_uid

logger = logging.getLogger(__name__)

LABELS = {
    FeedbackLabel.FRACTURE: "fracture",
    FeedbackLabel.NO_FRACTURE: "nofracture",
    FeedbackLabel.UNSURE: "unsure",
}


def export_feedback(sessions: sessionmaker[Session], out: Path) -> dict[str, int]:
    """Write the labelled set to ``out`` (which must not exist); returns the counts.

    Nothing is written outside ``out`` and its temporary sibling: a symbolic link, even a
    dangling one, counts as existing, and ``x/..`` names the folder it leads to. A folder that
    cannot be written is one line naming ``--out``.
    """
    out = Path(os.path.abspath(out))
    if out.exists() or out.is_symlink():
        raise UsageError(f"--out {out}: already exists; choose a new folder")
    try:
        return _export(sessions, out)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise UsageError(f"--out {out}: cannot be written: {exc.strerror or exc}{where}") from exc


def _export(sessions: sessionmaker[Session], out: Path) -> dict[str, int]:
    """Write into a fresh staging folder beside ``out``, then rename it to ``out``."""
    counts = {"cases": 0, "fracture": 0, "nofracture": 0, "unsure": 0, "files_missing": 0}
    rows: list[list[str]] = []
    with publish.staging(out) as staging:
        (staging / "images").mkdir(mode=0o700)
        with reading(sessions) as session:
            labelled = current(session)
        for instance, reading_row in labelled:
            source = Path(instance.file_path)
            if instance.removed_at is not None or not source.is_file():
                counts["files_missing"] += 1
                continue
            name = f"images/{instance.sop_instance_uid}.dcm"
            shutil.copyfile(source, staging / name)
            os.chmod(staging / name, 0o600)
            label = LABELS[reading_row.label]
            group = _group(instance.study_instance_uid, instance.sop_instance_uid)
            rows.append([name, instance.sop_instance_uid, label, group])
            counts["cases"] += 1
            counts[label] += 1
        with (staging / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "sop_instance_uid", "label", "group"])
            writer.writerows(rows)
        publish.publish(staging, out)
    logger.info("feedback exported", extra={"action": "feedback_export", **counts})
    return counts


def _group(study_instance_uid: str | None, sop_instance_uid: str) -> str:
    """The case's group: its study, when the source gave a valid Study Instance UID; else the
    case alone. A value that is no UID (``=HYPERLINK(...)``) never reaches ``labels.csv``,
    which sites open in spreadsheets."""
    if study_instance_uid is not None:
        try:
            return check_uid(study_instance_uid, "StudyInstanceUID")
        except PermanentError:
            pass
    return sop_instance_uid
