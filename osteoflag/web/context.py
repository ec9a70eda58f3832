"""What the views get from the app that serves them, built once per app.

Its own module so that ``app`` (which builds these and routes to the views) and ``views``
(which read them from ``request.app.state``) both import it and not each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker
from starlette.templating import Jinja2Templates

from osteoflag.config import Settings
from osteoflag.drift.watch import DriftWatch
from osteoflag.inference.budget import DecodeBudget
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs.derived import ModelIdentity
from osteoflag.web.metrics import Liveness
from osteoflag.web.security import Csrf


@dataclass(frozen=True)
class Probes:
    """What ``/healthz`` and ``/metrics`` need; every process role serves them."""

    sessions: sessionmaker[Session]
    liveness: Liveness
    registry: CollectorRegistry


class UploadSlots:
    """How many "try an image" uploads are in progress, up to ``limit``.

    Taken and given back by the async view only, on the event loop's one thread, so a
    counter needs no lock.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"upload slots must be at least 1, got {limit}")
        self._limit = limit
        self._busy = 0

    def acquire(self) -> bool:
        """Take a slot; False when all are taken."""
        if self._busy >= self._limit:
            return False
        self._busy += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self._busy -= 1


@dataclass(frozen=True)
class WebContext:
    """What every view needs, built once per app."""

    settings: Settings
    sessions: sessionmaker[Session]
    predictor: Predictor
    model: ModelIdentity
    liveness: Liveness
    wake_worker: Callable[[], None]
    csrf: Csrf
    templates: Jinja2Templates
    uploads: UploadSlots
    drift: DriftWatch | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.settings.web.max_upload_mb * 1024 * 1024)

    @property
    def decode_budget(self) -> DecodeBudget:
        """What decoding an upload may cost: the worker's per-instance budget."""
        return DecodeBudget(self.settings.worker.decode_budget_mb)
