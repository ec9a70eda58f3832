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

    @property
    def max_upload_bytes(self) -> int:
        return int(self.settings.web.max_upload_mb * 1024 * 1024)
