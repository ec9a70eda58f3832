"""Radiologists' feedback: reference labels recorded on results, and how far the model agrees.

Rows are only added (a corrected reading is a new row); an instance's latest row is its
current label. Agreement counts the instances whose model result is ``done`` and whose current
label is fracture or no fracture (``unsure`` says nothing either way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db.engine import reading
from osteoflag.db.models import Feedback, FeedbackLabel, Instance, InstanceState

logger = logging.getLogger(__name__)

#: Longest note kept; the page says notes are not for patient identifiers.
MAX_NOTE = 500
MAX_USER = 64


def record(
    sessions: sessionmaker[Session],
    instance_id: int,
    label: FeedbackLabel,
    note: str | None,
    user: str,
) -> Feedback:
    """Add one label to an instance; KeyError when there is no such instance, ValueError when
    the note holds a NUL character (no keyboard types one, and PostgreSQL cannot store it)."""
    note = (note or "").strip()[:MAX_NOTE] or None
    if note is not None and "\x00" in note:
        raise ValueError("a note cannot hold a NUL character")
    with sessions() as session:
        if session.get(Instance, instance_id) is None:
            raise KeyError(instance_id)
        row = Feedback(instance_id=instance_id, label=label, note=note, recorded_by=user[:MAX_USER])
        session.add(row)
        session.commit()
        session.refresh(row)
        session.expunge(row)
    logger.info(
        "feedback recorded",
        extra={"action": "feedback", "instance_id": instance_id, "label": label.value},
    )
    return row


def history(sessions: sessionmaker[Session], instance_id: int) -> list[Feedback]:
    """Every label recorded for an instance, newest first."""
    with reading(sessions) as session:
        rows = session.scalars(
            select(Feedback).where(Feedback.instance_id == instance_id).order_by(Feedback.id.desc())
        ).all()
        session.expunge_all()
    return list(rows)


def current(session: Session) -> list[tuple[Instance, Feedback]]:
    """Each instance with feedback, with its latest label, oldest instance first."""
    latest = select(func.max(Feedback.id).label("id")).group_by(Feedback.instance_id).subquery()
    rows = session.execute(
        select(Instance, Feedback)
        .join(Feedback, Feedback.instance_id == Instance.id)
        .where(Feedback.id.in_(select(latest.c.id)))
        .order_by(Instance.id)
    ).all()
    return [(instance, label) for instance, label in rows]


@dataclass(frozen=True)
class Agreement:
    """The model's results against the current labels (positive class: fracture)."""

    tp: int = 0
    fn: int = 0
    tn: int = 0
    fp: int = 0
    unsure: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fn + self.tn + self.fp

    @property
    def sensitivity(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def specificity(self) -> float | None:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None


def agreement(sessions: sessionmaker[Session]) -> Agreement:
    """Live agreement on the cases with feedback, for the dashboard."""
    counts = {"tp": 0, "fn": 0, "tn": 0, "fp": 0, "unsure": 0}
    with reading(sessions) as session:
        for instance, label in current(session):
            if instance.state != InstanceState.DONE or instance.label is None:
                continue
            if label.label is FeedbackLabel.UNSURE:
                counts["unsure"] += 1
                continue
            flagged = instance.label == FeedbackLabel.FRACTURE.value
            if label.label is FeedbackLabel.FRACTURE:
                counts["tp" if flagged else "fn"] += 1
            else:
                counts["fp" if flagged else "tn"] += 1
    return Agreement(**counts)
