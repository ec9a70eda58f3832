"""The daemon's side of drift watch: the last classified instances against the reference."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import DriftSettings
from osteoflag.db.engine import reading
from osteoflag.db.models import Instance, InstanceState
from osteoflag.drift.reference import DriftReport, Inputs, Reference, compare


def recent_inputs(session: Session, window: int) -> list[Inputs]:
    """The last ``window`` classified instances, newest first."""
    rows = session.execute(
        select(
            Instance.probability,
            Instance.body_part,
            Instance.photometric,
            Instance.manufacturer,
            Instance.rows,
            Instance.columns,
        )
        .where(Instance.state == InstanceState.DONE, Instance.probability.is_not(None))
        .order_by(Instance.finished_at.desc(), Instance.id.desc())
        .limit(window)
    ).all()
    return [
        Inputs(float(p or 0.0), part, photo, maker, r, c) for p, part, photo, maker, r, c in rows
    ]


@dataclass(frozen=True)
class DriftWatch:
    """A bundle's reference and the configured rule."""

    reference: Reference
    settings: DriftSettings

    def report(self, sessions: sessionmaker[Session]) -> DriftReport:
        """The window compared with the reference, read from the database now."""
        with reading(sessions) as session:
            recent = recent_inputs(session, self.settings.window)
        return compare(
            self.reference,
            recent,
            self.settings.min_results,
            self.settings.psi_alert,
            self.settings.share_alert,
        )
