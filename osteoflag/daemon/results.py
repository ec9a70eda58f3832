"""How the daemon finishes an instance: from a worker outcome to the objects owed to the PACS.

:class:`Reporting` is the worker's :class:`~osteoflag.daemon.finishing.Finishing` hook, and the
whole route of a result in one place:

1. ``done`` / ``refused`` (no transaction open): build the SR, and the presentation state and
   summary image when they apply, each only when some destination (in shadow mode or not)
   takes its kind, dated when the result was made, and write them under the outgoing folder;
   for a refused instance only an Undetermined SR, and only with ``[report] undetermined_sr``.
2. The record they return joins the worker's transaction that marks the outcome: it notes
   the study, series and body part on the instance row and adds one ``pending`` outbound row
   per object and destination, so result and delivery obligation commit together or not at
   all. A destination in shadow mode gets no row; the objects of the kinds it takes are noted
   as kept for it in the event log instead (``kept_shadow``), for the operator page.
3. ``committed``: wake the sender(s) for the new rows (after the commit, not before: a sender
   woken earlier would not see them yet).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from pydicom import Dataset
from sqlalchemy.orm import Session

from osteoflag.config import Settings
from osteoflag.daemon.finishing import Record
from osteoflag.db import outbound, queue
from osteoflag.db.models import Instance
from osteoflag.errors import PermanentError
from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import GreyArray
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.outbound import destinations_by_kind, shadow_by_kind, write_objects

logger = logging.getLogger(__name__)


class Reporting:
    """Writes the objects of each outcome, queues them with it, then announces them."""

    def __init__(
        self,
        settings: Settings,
        model: ModelIdentity,
        announce: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._settings = settings
        self._model = model
        self._announce = tuple(announce)

    def done(
        self, instance: Instance, source: Dataset, grey: GreyArray, result: queue.Result
    ) -> Record:
        """The SR (and summary image) of a classified instance, written; their rows to add."""
        classification = Classification(label=Label(result.label), probability=result.probability)
        written = write_objects(
            instance,
            source,
            classification,
            self._model,
            self._settings,
            result.made_at,
            grey=grey,
            region=result.region,
        )
        return self._recording(instance, source, written)

    def refused(
        self, instance: Instance, source: Dataset, reason: str, made_at: datetime
    ) -> Record:
        """An Undetermined SR, when configured and when the source has the UIDs it needs."""
        classification = Classification(label=Label.UNDETERMINED, reason=reason)
        try:
            written = write_objects(
                instance, source, classification, self._model, self._settings, made_at
            )
        except PermanentError as exc:
            logger.warning(
                "no undetermined SR: %s",
                exc,
                extra={"action": "produce_outbound", "sop_instance_uid": instance.sop_instance_uid},
            )
            written = []
        return self._recording(instance, source, written)

    def committed(self) -> None:
        """Wake the sender(s): in this process directly, elsewhere by ``NOTIFY``."""
        for call in self._announce:
            call()

    def _recording(
        self, instance: Instance, source: Dataset, written: list[outbound.Produced]
    ) -> Record:
        withheld = shadow_by_kind(self._settings)

        def record(session: Session) -> None:
            _note_source(session, instance, source)
            if written:
                outbound.add_pending(
                    session, instance, written, destinations_by_kind(self._settings)
                )
                if withheld is not None:
                    outbound.record_shadow(session, instance, written, withheld)

        return record


def _note_source(session: Session, instance: Instance, source: Dataset) -> None:
    """Keep the study, series and body part on the row, for the operator page and retention,
    and the input statistics drift watch compares (size, photometric, manufacturer)."""
    row = session.get(Instance, instance.id)
    if row is not None:
        row.study_instance_uid = _uid(source, "StudyInstanceUID")
        row.series_instance_uid = _uid(source, "SeriesInstanceUID")
        row.body_part = _text(source, "BodyPartExamined", 64)  # the columns' lengths
        row.rows = _positive(source.get("Rows"))
        row.columns = _positive(source.get("Columns"))
        row.photometric = _text(source, "PhotometricInterpretation", 16)
        row.manufacturer = _text(source, "Manufacturer", 64)


def _uid(source: Dataset, keyword: str) -> str | None:
    """A UID as the row keeps it; None when it cannot be kept whole (longer than the 64
    characters a UID may have, or holding a NUL, which PostgreSQL refuses): a cut one would
    name another study."""
    value = str(source.get(keyword, ""))
    return value if value and len(value) <= 64 and "\x00" not in value else None


def _text(source: Dataset, keyword: str, length: int) -> str | None:
    """A value as the row keeps it for the page and drift watch: NULs dropped (PostgreSQL
    refuses them) and cut to ``length``, so a sloppy value never fails the result."""
    value = str(source.get(keyword, "")).replace("\x00", "").strip()
    return value[:length] or None


def _positive(value: object) -> int | None:
    """A Rows/Columns value for drift watch, or None when absent or malformed."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
