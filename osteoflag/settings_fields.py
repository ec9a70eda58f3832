"""The field types and base section every part of the settings shares (kept apart so the
settings' sections can live in more than one module)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

AETitle = Annotated[
    str, Field(min_length=1, max_length=16, pattern=r"^[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*$")
]
Port = Annotated[int, Field(ge=1, le=65535)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: The longest time a setting may name: a century is past any sensible value and well inside
#: what date arithmetic, timers and socket timeouts can hold, so "never" written as ``inf`` or
#: ``1e12`` is refused by its key instead of overflowing when the daemon starts or a job runs.
CENTURY_DAYS = 36525
Seconds = Annotated[float, Field(gt=0, le=CENTURY_DAYS * 86400, strict=False)]
PathValue = Annotated[Path, Field(strict=False)]
#: The largest count a setting may name (rows a run claims, results a window holds): counts go
#: into SQL, where past 64 bits they overflow at every run instead of being refused by key.
MAX_COUNT = 1_000_000


class Section(BaseModel):
    """A settings table: unknown keys refused, types strict, frozen once read."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
