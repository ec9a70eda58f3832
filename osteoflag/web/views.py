"""Request handlers: dashboard, results, a result's detail and feedback, re-queue, try an
image, health. Feedback is taken only on a protected page: the request's user name is stored
with the label, so an unprotected page shows no form and refuses the POST.

Database and model work runs in Starlette's thread pool (sync handlers, or
``run_in_threadpool``), never on the event loop. No page shows patient name, ID or birth
date: instances are named by SOP Instance UID, and the SR tree (``render_sr``) omits them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from osteoflag.db import feedback
from osteoflag.db.models import FeedbackLabel, InstanceState
from osteoflag.db.queue import requeue_failed
from osteoflag.errors import OsteoflagError
from osteoflag.pacs.derived import Kind
from osteoflag.pacs.show import render_sr
from osteoflag.web import queries
from osteoflag.web.context import Probes, WebContext
from osteoflag.web.figures import bundle_figures
from osteoflag.web.security import CSRF_FIELD, user_name
from osteoflag.web.tryimage import Trial, UploadError, classify_upload, png_bytes

logger = logging.getLogger(__name__)

RESULTS_LIMIT = 100
#: Largest row id a database holds (a signed 64-bit integer): beyond it nothing can exist.
MAX_ROW_ID = 2**63 - 1
#: Room for the multipart boundaries and headers around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def _context(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def _instance_id(request: Request) -> int:
    """The ``{instance_id}`` of the path; 404 when no row could have it: not a number, or one
    past 64 bits (the database cannot even compare it, and Python refuses to convert a
    string of more than 4,300 digits)."""
    text = str(request.path_params["instance_id"])
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_ROW_ID)):
        raise HTTPException(404)
    instance_id = int(text)
    if instance_id > MAX_ROW_ID:
        raise HTTPException(404)
    return instance_id


def _probes(request: Request) -> Probes:
    probes: Probes = request.app.state.probes
    return probes


def _page(
    request: Request, template: str, values: Mapping[str, Any], status_code: int = 200
) -> Response:
    """Render ``template`` with a CSRF token for its forms (cookie set if new)."""
    context = _context(request)
    cookie = context.csrf.cookie(request)
    response = context.templates.TemplateResponse(
        request,
        template,
        {**values, "csrf_field": CSRF_FIELD, "csrf_token": context.csrf.token_for(cookie)},
        status_code=status_code,
    )
    context.csrf.remember(response, cookie)
    return response


def _message(request: Request, status_code: int, title: str, text: str) -> Response:
    return _page(request, "message.html", {"title": title, "text": text}, status_code)


async def not_found(request: Request, exc: Exception) -> Response:
    return _message(request, 404, "Not found", "There is nothing at this address.")


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """A page whose query failed: 503 and one log line, for a database that is briefly away.
    The error's class only: its text quotes the statement's parameters (a reading's note)."""
    logger.warning(
        "web page without its database",
        extra={"action": "web_database", "path": request.url.path, "error": type(exc).__name__},
    )
    text = "The queue database does not answer; this page works again as soon as it does."
    return _message(request, 503, "Database unavailable", text)


def manifest_metrics(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Validation metrics from the manifest, nested keys flattened to ``a.b``."""
    rows: list[tuple[str, str]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(manifest_metrics(value, f"{name}."))
        elif isinstance(value, float):
            rows.append((name, f"{value:.4f}"))
        else:
            rows.append((name, str(value)))
    return rows


def dashboard(request: Request) -> Response:
    context = _context(request)
    manifest = context.predictor.bundle.manifest
    return _page(
        request,
        "dashboard.html",
        {
            "overview": queries.overview(context.sessions),
            "liveness": context.liveness(),
            "manifest": manifest,
            "metrics": manifest_metrics({"validation": manifest.metrics.get("validation", {})}),
            "figures": bundle_figures(context.predictor.bundle),
            "agreement": feedback.agreement(context.sessions),
            "drift": context.drift.report(context.sessions) if context.drift else None,
            "drift_settings": context.settings.drift,
            "states": [state.value for state in InstanceState],
        },
    )


def results(request: Request) -> Response:
    context = _context(request)
    state = request.query_params.get("state") or None
    if state is not None and state not in {s.value for s in InstanceState}:
        return _message(request, 400, "Unknown state", f"No instance state is called {state!r}.")
    rows = queries.latest(context.sessions, RESULTS_LIMIT, state)
    return _page(
        request,
        "results.html",
        {"rows": rows, "state": state, "states": [s.value for s in InstanceState]},
    )


def _file_of(found: queries.Detail, kind: Kind) -> Path | None:
    """The produced object of ``kind``: from an outbound row, or kept in shadow mode."""
    paths = [Path(row.file_path) for row in found.outbound if row.kind == kind.value]
    paths += [item.path for item in found.kept if item.kind == kind.value]
    return next((path for path in paths if path.is_file()), None)


def _sr_text(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return render_sr(dcmread(path))
    except (InvalidDicomError, OSError, OsteoflagError) as exc:
        return f"The SR at {path.name} cannot be shown: {exc}"


def result(request: Request) -> Response:
    context = _context(request)
    instance_id = _instance_id(request)
    try:
        found = queries.detail(context.sessions, instance_id)
    except KeyError:
        raise HTTPException(404) from None
    return _page(
        request,
        "result.html",
        {
            "instance": found.instance,
            "outbound": found.outbound,
            "kept": found.kept,
            "feedback": feedback.history(context.sessions, instance_id),
            "feedback_labels": [label.value for label in FeedbackLabel],
            "can_record": user_name(context.settings.web, request.headers.get("authorization"))
            is not None,
            "recorded": request.query_params.get("feedback"),
            "has_summary": _file_of(found, Kind.SUMMARY) is not None,
            "sr_text": _sr_text(_file_of(found, Kind.SR)),
            "requeued": request.query_params.get("requeued"),
        },
    )


def summary_png(request: Request) -> Response:
    """The produced summary Secondary Capture, decoded and re-encoded as PNG."""
    context = _context(request)
    try:
        found = queries.detail(context.sessions, _instance_id(request))
    except KeyError:
        raise HTTPException(404) from None
    path = _file_of(found, Kind.SUMMARY)
    if path is None:
        raise HTTPException(404)
    try:
        pixels = dcmread(path).pixel_array
    except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
        logger.warning(
            "summary image unreadable",
            extra={"action": "web_summary", "file": str(path), "error": str(exc)},
        )
        raise HTTPException(404) from exc
    return Response(png_bytes(pixels), media_type="image/png")


def _csrf_refused(request: Request) -> Response:
    return _message(
        request, 403, "Refused", "The form's CSRF token is missing or invalid; reload the page."
    )


async def requeue(request: Request) -> Response:
    """POST: put one failed instance back in the queue (CSRF-checked) and wake the worker."""
    context = _context(request)
    instance_id = _instance_id(request)
    form = await request.form(max_files=0, max_fields=4)
    if not context.csrf.valid(request, form.get(CSRF_FIELD)):
        return _csrf_refused(request)
    count = await run_in_threadpool(requeue_failed, context.sessions, [instance_id])
    if count:
        context.wake_worker()
    logger.info(
        "re-queued from the web page",
        extra={"action": "web_requeue", "instance_id": instance_id, "requeued": count},
    )
    return RedirectResponse(f"/results/{instance_id}?requeued={count}", status_code=303)


async def record_feedback(request: Request) -> Response:
    """POST ``label`` (fracture / no_fracture / unsure) and an optional ``note``."""
    context = _context(request)
    instance_id = _instance_id(request)
    form = await request.form(max_files=0, max_fields=4)
    if not context.csrf.valid(request, form.get(CSRF_FIELD)):
        return _csrf_refused(request)
    user = user_name(context.settings.web, request.headers.get("authorization"))
    if user is None:
        return _message(
            request,
            403,
            "Refused",
            "Feedback needs to know who records it: protect the page with web.username and "
            "web.password (or web.token) first.",
        )
    try:
        label = FeedbackLabel(str(form.get("label", "")))
    except ValueError:
        return _message(
            request, 400, "Refused", "Choose fracture, no fracture or unsure before recording."
        )
    note = form.get("note")
    try:
        await run_in_threadpool(
            feedback.record,
            context.sessions,
            instance_id,
            label,
            note if isinstance(note, str) else None,
            user,
        )
    except KeyError:
        raise HTTPException(404) from None
    except ValueError as exc:
        return _message(request, 400, "Refused", f"The reading was not recorded: {exc}.")
    return RedirectResponse(f"/results/{instance_id}?feedback=recorded", status_code=303)


def try_form(request: Request) -> Response:
    return _page(request, "try.html", {"limit_mb": _context(request).settings.web.max_upload_mb})


class UploadTooLarge(Exception):
    """The request body went past the upload limit."""


async def _limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise UploadTooLarge
    return bytes(body)


def _replay(request: Request, body: bytes) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def _upload(request: Request, limit: int) -> tuple[bytes, object]:
    """The uploaded file's bytes (at most ``limit``) and the form's CSRF token."""
    body = await _limited(request, limit + MULTIPART_OVERHEAD)
    form = await _replay(request, body).form(max_files=1, max_fields=2)
    token = form.get(CSRF_FIELD)
    upload = form.get("image")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise UploadError("choose a PNG, JPEG or DICOM file to upload")
    data = await upload.read()
    await form.close()
    if len(data) > limit:
        raise UploadTooLarge
    return data, token


async def try_upload(request: Request) -> Response:
    """POST: classify an uploaded image in memory; nothing is queued, stored or sent.

    At most ``[web] max_concurrent_uploads`` at once: each may hold its decode budget, and
    a burst of them must not take the daemon's memory; the others get 503 at once.
    """
    context = _context(request)
    if not context.uploads.acquire():
        busy = _message(
            request, 503, "Busy", "Other images are being classified; try again in a moment."
        )
        busy.headers["Retry-After"] = "5"
        return busy
    try:
        return await _try_upload(request, context)
    finally:
        context.uploads.release()


async def _try_upload(request: Request, context: WebContext) -> Response:
    limit_mb = context.settings.web.max_upload_mb
    values: dict[str, Any] = {"limit_mb": limit_mb}
    try:
        data, token = await _upload(request, context.max_upload_bytes)
        if not context.csrf.valid(request, token):
            return _message(request, 403, "Refused", "The form's CSRF token is missing or invalid.")
        trial: Trial = await run_in_threadpool(
            classify_upload, data, context.predictor, context.model, context.decode_budget
        )
    except ClientDisconnect:  # the browser went away mid-upload: nobody to answer
        logger.info("upload abandoned by the client", extra={"action": "try_image"})
        return Response(status_code=400)
    except UploadTooLarge:
        values["error"] = f"The file is larger than the {limit_mb:g} MB upload limit."
        return _page(request, "try.html", values, 413)
    except UploadError as exc:
        values["error"] = f"Cannot classify this upload: {exc}."
        return _page(request, "try.html", values, 400)
    values["trial"] = trial
    return _page(request, "try.html", values)


def healthz(request: Request) -> Response:
    """200 when the database answers and every component is alive, else 503; JSON either way."""
    probes = _probes(request)
    checks = {"database": queries.database_answers(probes.sessions), **probes.liveness()}
    healthy = all(checks.values())
    body = {"status": "ok" if healthy else "unhealthy", **checks}
    return JSONResponse(body, status_code=200 if healthy else 503)


def metrics(request: Request) -> Response:
    return Response(generate_latest(_probes(request).registry), media_type=CONTENT_TYPE_LATEST)
