"""The Starlette applications: routes, templates and middleware.

``create_app`` gets everything it serves from the daemon (sessions, the loaded bundle and
predictor, liveness probes) so the web layer owns no database engine or model of its own.
Processes that load no model (``serve --role listener`` or ``sender``) serve
``create_probe_app``: ``/healthz`` and ``/metrics`` only, for supervisors, load balancers
and Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from osteoflag.config import Settings
from osteoflag.drift.reference import bundle_reference
from osteoflag.drift.watch import DriftWatch
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs.derived import RESEARCH_STATEMENT, ModelIdentity
from osteoflag.web import views
from osteoflag.web.context import Probes, UploadSlots, WebContext
from osteoflag.web.metrics import Liveness, metrics_registry
from osteoflag.web.security import AuthMiddleware, Csrf, SecurityHeadersMiddleware

HERE: Final = Path(__file__).parent


def format_age(seconds: float | None) -> str:
    """``None`` -> "-", else a short human duration."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_time(value: datetime | None) -> str:
    """UTC timestamps to the second."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _templates() -> Jinja2Templates:
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    filters: dict[str, Callable[..., Any]] = {
        "age": format_age,
        "when": format_time,
        "percent": format_percent,
    }
    environment.filters.update(filters)
    environment.globals["research_statement"] = RESEARCH_STATEMENT
    return Jinja2Templates(env=environment)


PROBE_ROUTES: Final = [
    Route("/healthz", views.healthz, name="healthz"),
    Route("/metrics", views.metrics, name="metrics"),
]
ROUTES: Final = [
    Route("/", views.dashboard, name="dashboard"),
    Route("/results", views.results, name="results"),
    Route("/results/{instance_id}", views.result, name="result"),
    Route("/results/{instance_id}/summary.png", views.summary_png, name="summary_png"),
    Route("/results/{instance_id}/requeue", views.requeue, methods=["POST"], name="requeue"),
    Route(
        "/results/{instance_id}/feedback",
        views.record_feedback,
        methods=["POST"],
        name="record_feedback",
    ),
    Route("/try", views.try_form, name="try"),
    Route("/try", views.try_upload, methods=["POST"], name="try_upload"),
    *PROBE_ROUTES,
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def create_app(
    settings: Settings,
    sessions: sessionmaker[Session],
    predictor: Predictor,
    *,
    liveness: Liveness,
    wake_worker: Callable[[], None],
) -> Starlette:
    """The operator page for one daemon."""
    bundle = predictor.bundle
    reference = bundle_reference(bundle.path, bundle.manifest.files)
    drift = (
        DriftWatch(reference, settings.drift, bundle.model_id) if reference is not None else None
    )
    context = WebContext(
        settings=settings,
        sessions=sessions,
        predictor=predictor,
        model=ModelIdentity.from_bundle(predictor.bundle),
        liveness=liveness,
        wake_worker=wake_worker,
        csrf=Csrf(),
        templates=_templates(),
        uploads=UploadSlots(settings.web.max_concurrent_uploads),
        drift=drift,
    )
    handlers = {404: views.not_found, SQLAlchemyError: views.database_unavailable}
    app = _starlette(ROUTES, settings, exception_handlers=handlers)
    app.state.context = context
    app.state.probes = Probes(sessions, liveness, metrics_registry(sessions, liveness, drift))
    return app


def create_probe_app(
    settings: Settings, sessions: sessionmaker[Session], *, liveness: Liveness
) -> Starlette:
    """``/healthz`` and ``/metrics`` alone, for a process that loads no model."""
    app = _starlette(PROBE_ROUTES, settings)
    app.state.probes = Probes(sessions, liveness, metrics_registry(sessions, liveness))
    return app


def _starlette(routes: Sequence[BaseRoute], settings: Settings, **options: Any) -> Starlette:
    """The routes behind the security headers and the token check (``/healthz`` stays open)."""
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(AuthMiddleware, settings=settings.web),
        ],
        **options,
    )
