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
from typing import Any, TextIO

import pydicom.config

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
#: Longest text of one field: a peer's strings (AE titles, UIDs, a library's message quoting
#: what it received) end up in fields, and one line must stay readable and bounded.
MAX_FIELD_CHARS = 2000
#: A traceback gets more room, but a bounded one too.
MAX_EXCEPTION_CHARS = 20000


def capped(value: Any, limit: int = MAX_FIELD_CHARS) -> Any:
    """``value`` with every string in it cut to ``limit`` characters, saying how many were cut."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... [{len(value) - limit} more characters]"
    if isinstance(value, list | tuple):
        return [capped(item, limit) for item in value]
    return value


class NetworkErrorsAsLines(logging.Filter):
    """pynetdicom logs a peer's failed TLS handshake or reset connection with its traceback,
    which says nothing the message does not; keep the message, drop the traceback. Tracebacks
    of other exceptions (a bug in an event handler) stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.name.startswith("pynetdicom") and isinstance(error, OSError):
            record.exc_info = None
            record.exc_text = None
        return True


class JSONFormatter(logging.Formatter):
    """Render a record and its ``extra`` fields as a single JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": capped(record.getMessage()),
        }
        entry.update({k: capped(v) for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = capped(self.formatException(record.exc_info), MAX_EXCEPTION_CHARS)
        return json.dumps(entry, default=lambda value: capped(str(value)))


def json_handler(stream: TextIO) -> logging.Handler:
    """A handler writing JSON lines to ``stream``, network errors without their traceback."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(NetworkErrorsAsLines())
    return handler


def configure_logging(level: str) -> None:
    """Send every logger's records, at ``level`` and above, to stderr as JSON lines."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler(sys.stderr)]
    root.setLevel(level.upper())
    # These libraries narrate routine steps at INFO; keep their warnings and errors only.
    for chatty in ("pynetdicom", "alembic", "apscheduler", "uvicorn", "highdicom"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    # pydicom's value validation quotes the offending value, as a log record and a warning:
    # from a malformed data set that can be a patient's name or birth date. Values are used
    # as received (the SR copies them, PS3.3 C.7.1.1), so they are not validated at all.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
