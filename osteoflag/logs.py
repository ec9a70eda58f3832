"""Structured logging for the daemon: one JSON object per line on stderr.

Only ``main()`` calls ``configure_logging``; library modules just use
``logging.getLogger(__name__)`` and pass structured fields in ``extra``. Those fields
are UIDs, AE titles and counts, never patient names or IDs.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pydicom.config

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """Render a record and its ``extra`` fields as a single JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send every logger's records, at ``level`` and above, to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # These libraries narrate routine steps at INFO; keep their warnings and errors only.
    for chatty in ("pynetdicom", "alembic", "apscheduler", "uvicorn", "highdicom"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    # pydicom's value validation quotes the offending value, as a log record and a warning:
    # from a malformed data set that can be a patient's name or birth date. Values are used
    # as received (the SR copies them, PS3.3 C.7.1.1), so they are not validated at all.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
