"""The daemon's side of drift watch: the last classified instances against the reference."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import DriftSettings
from osteoflag.db.engine import reading
from osteoflag.db.models import Instance, InstanceState
from osteoflag.drift.reference import DriftReport, Inputs, Reference, compare


def recent_inputs(session: Session, window: int, model: str) -> list[Inputs]:
    """The last ``window`` instances classified by ``model`` (``NAME@VERSION``), newest first:
    another bundle's scores, before ``model.bundle`` was changed, are on another scale.

    Every result since the schema kept input statistics has its Rows (what was decoded); one
    without was classified before, so only its score is compared."""
    rows = session.execute(
        select(
            Instance.probability,
            Instance.body_part,
            Instance.photometric,
            Instance.manufacturer,
            Instance.rows,
            Instance.columns,
        )
        .where(
            Instance.state == InstanceState.DONE,
            Instance.probability.is_not(None),
            Instance.model == model,
        )
        .order_by(Instance.finished_at.desc(), Instance.id.desc())
        .limit(window)
    ).all()
    return [
        Inputs(float(p or 0.0), part, photo, maker, r, c, described=r is not None)
        for p, part, photo, maker, r, c in rows
    ]


@dataclass(frozen=True)
class DriftWatch:
    """A bundle's reference, the model it judges (``NAME@VERSION``) and the configured rule."""

    reference: Reference
    settings: DriftSettings
    model: str

    def report(self, sessions: sessionmaker[Session]) -> DriftReport:
        """The window compared with the reference, read from the database now."""
        with reading(sessions) as session:
            recent = recent_inputs(session, self.settings.window, self.model)
        return compare(
            self.reference,
            recent,
            self.settings.min_results,
            self.settings.psi_alert,
            self.settings.share_alert,
        )
