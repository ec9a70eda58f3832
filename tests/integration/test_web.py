"""The operator page's HTTP surface on a real uvicorn server: health, metrics, auth, CSRF,
uploads. Real SQLite in ``tmp_path``, the tiny real bundle, stdlib HTTP on loopback."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from osteoflag.config import Settings
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, reading, session_factory
from osteoflag.db.models import Instance, InstanceState, utcnow
from osteoflag.errors import OsteoflagError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.maps import add_maps_to_bundle
from osteoflag.inference.pixels import load_display
from osteoflag.inference.predictor import Predictor
from osteoflag.web.app import create_app, create_probe_app
from osteoflag.web.server import WebServer
from testkit.daemon import base_sections, osteoflag, write_config
from testkit.inference_data import png_of, radiograph
from testkit.net import free_port
from testkit.wait import wait_for
from tests.conftest import make_settings
from tests.helpers.rows import received
from tests.helpers.web import Reply, WebClient, csrf_token

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """The tiny bundle with its spatial map output, so flagged uploads get a region."""
    folder = tmp_path_factory.mktemp("web-bundle") / "maps"
    add_maps_to_bundle(tiny_bundle, folder)
    return Predictor(load_bundle(folder), threads=1, batch_size=1)


@pytest.fixture
def liveness() -> dict[str, bool]:
    return {"listener": True, "worker": True}


Serve = Callable[..., Any]


@pytest.fixture
def serve(tmp_path: Path, predictor: Predictor, liveness: dict[str, bool]) -> Iterator[Serve]:
    """Start a web server for settings built from ``web`` keys; yield (client, sessions)."""
    started: list[WebServer] = []

    def start(
        database_url: str | None = None, **web: Any
    ) -> tuple[WebClient, sessionmaker[Session], Settings]:
        settings = make_settings(tmp_path, web={"port": 0, **web})
        engine = make_engine(database_url or settings.storage.database_url)
        if database_url is None:
            migrate(engine)
        sessions = session_factory(engine)
        app = create_app(
            settings, sessions, predictor, liveness=lambda: dict(liveness), wake_worker=lambda: None
        )
        server = WebServer(app, settings.web)
        server.start()
        started.append(server)
        return WebClient(f"http://127.0.0.1:{server.port}"), sessions, settings

    yield start
    for server in started:
        server.stop()


def _empty_app() -> Starlette:
    return Starlette(routes=[])


def _received(sessions: sessionmaker[Session], count: int) -> list[int]:
    return received(sessions, [f"/nonexistent/{n}.dcm" for n in range(count)])


def _failed_instance(sessions: sessionmaker[Session]) -> int:
    [instance_id] = _received(sessions, 1)
    [claimed] = queue.claim_instances(sessions, "test", 1, timedelta(minutes=5))
    with sessions() as session:
        assert queue.refuse(
            session, claimed.id, "test", InstanceState.FAILED, "decoder exploded", utcnow()
        )
        session.commit()
    return instance_id


def _state(sessions: sessionmaker[Session], instance_id: int) -> InstanceState:
    with reading(sessions) as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        return row.state


def test_healthz_reports_database_and_components(serve: Serve, liveness: dict[str, bool]) -> None:
    client, _, _ = serve()
    ok = client.get("/healthz")
    assert ok.status == 200
    assert json.loads(ok.body) == {
        "status": "ok",
        "database": True,
        "listener": True,
        "worker": True,
    }
    liveness["worker"] = False
    stuck = client.get("/healthz")
    assert stuck.status == 503
    assert json.loads(stuck.body)["worker"] is False


def test_a_process_without_the_model_serves_health_and_metrics_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, web={"port": 0, "token": TOKEN})
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    _received(sessions, 2)
    alive = {"listener": True}
    server = WebServer(
        create_probe_app(settings, sessions, liveness=lambda: dict(alive)), settings.web
    )
    server.start()
    try:
        client = WebClient(f"http://127.0.0.1:{server.port}")
        health = client.get("/healthz")  # open, as for the full app
        assert (health.status, json.loads(health.body)) == (
            200,
            {"status": "ok", "database": True, "listener": True},
        )
        alive["listener"] = False
        assert client.get("/healthz").status == 503
        assert client.get("/metrics").status == 401  # the token still guards the rest
        authorised = WebClient(client.base, {"Authorization": f"Bearer {TOKEN}"})
        families = {
            family.name: family
            for family in text_string_to_metric_families(authorised.get("/metrics").text)
        }
        states = {
            sample.labels["state"]: sample.value
            for sample in families["osteoflag_instances"].samples
        }
        assert states["queued"] == 2
        assert authorised.get("/").status == 404
        assert authorised.get("/try").status == 404
    finally:
        server.stop()
        engine.dispose()


def test_healthz_is_503_when_the_database_does_not_answer(serve: Serve) -> None:
    closed = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    client, _, _ = serve(database_url=closed)
    reply = client.get("/healthz")
    assert reply.status == 503
    assert json.loads(reply.body)["database"] is False
    metrics = client.get("/metrics").text
    assert 'osteoflag_component_up{component="database"} 0.0' in metrics


def test_pages_are_503_without_a_traceback_when_the_database_does_not_answer(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    client, _, _ = serve(database_url=closed)
    for path in ["/", "/results", "/results/1"]:
        reply = client.get(path)
        assert reply.status == 503, path
        assert "The queue database does not answer" in reply.text
    assert not [record for record in caplog.records if record.exc_info]
    assert client.get("/try").status == 200  # what needs no database still works


def test_metrics_follow_the_queue(serve: Serve) -> None:
    client, sessions, _ = serve()
    _received(sessions, 3)
    claimed = queue.claim_instances(sessions, "test", 2, timedelta(minutes=5))
    with sessions() as session:
        assert queue.complete(
            session, claimed[0].id, "test", queue.Result(0.9, "fracture", 0.5, "m@1", 120.0)
        )
        assert queue.refuse(
            session, claimed[1].id, "test", InstanceState.FAILED, "unreadable", utcnow()
        )
        session.commit()
    reply = client.get("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }
    assert samples[("osteoflag_instances_received_total", ())] == 3
    assert samples[("osteoflag_instances", (("state", "done"),))] == 1
    assert samples[("osteoflag_instances", (("state", "failed"),))] == 1
    assert samples[("osteoflag_instances", (("state", "queued"),))] == 1
    assert samples[("osteoflag_outbound", (("state", "pending"),))] == 0
    assert samples[("osteoflag_queue_oldest_age_seconds", ())] >= 0
    assert samples[("osteoflag_inference_seconds_bucket", (("le", "0.1"),))] == 0
    assert samples[("osteoflag_inference_seconds_bucket", (("le", "0.25"),))] == 1
    assert samples[("osteoflag_inference_seconds_count", ())] == 1
    assert samples[("osteoflag_inference_seconds_sum", ())] == pytest.approx(0.12)


def test_requeue_needs_a_valid_csrf_token(serve: Serve) -> None:
    client, sessions, _ = serve()
    instance_id = _failed_instance(sessions)
    path = f"/results/{instance_id}/requeue"
    listed = client.get("/results?state=failed")
    assert f'{path}"' in listed.text  # the list offers the same re-queue form
    assert client.post_form(path, {}).status == 403
    page = client.get(f"/results/{instance_id}")
    assert page.status == 200
    assert client.post_form(path, {"csrf_token": "0" * 64}).status == 403
    stranger = WebClient(client.base)  # another browser: its cookie does not match the token
    assert stranger.post_form(path, {"csrf_token": csrf_token(page.text)}).status == 403
    assert _state(sessions, instance_id) is InstanceState.FAILED
    done = client.post_form(path, {"csrf_token": csrf_token(page.text)})
    assert done.status == 303
    assert done.headers["location"] == f"/results/{instance_id}?requeued=1"
    assert _state(sessions, instance_id) is InstanceState.QUEUED


def test_an_instance_id_past_64_bits_is_not_found(serve: Serve) -> None:
    client, _, _ = serve()
    huge = str(2**63)
    paths = (f"/results/{huge}", f"/results/{huge}/summary.png", f"/results/{'9' * 5000}")
    others = ("/results/-1", "/results/1e3", "/results/%D9%A1")  # the last: Arabic-Indic one
    for path in (*paths, *others):
        assert client.get(path).status == 404, path
    token = csrf_token(client.get("/try").text)
    assert client.post_form(f"/results/{huge}/requeue", {"csrf_token": token}).status == 404
    assert client.get(f"/results/{2**63 - 1}").status == 404


def _slow_upload(port: int) -> socket.socket:
    """An upload whose body never finishes: it holds its slot until the socket closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    boundary = "slow"
    sock.sendall(
        f"POST /try HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
        f"--{boundary}\r\n".encode()
    )
    return sock


def test_uploads_beyond_the_limit_are_refused_with_503(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client, _, _ = serve(max_concurrent_uploads=2)
    port = int(client.base.rsplit(":", 1)[1])
    token = csrf_token(client.get("/try").text)
    png = png_of(radiograph(maximum=255, seed=6), tmp_path / "y.png").read_bytes()

    def answered(status: int) -> Reply | None:
        reply = client.post_file("/try", {"csrf_token": token}, "y.png", png)
        return reply if reply.status == status else None

    held = [_slow_upload(port), _slow_upload(port)]
    try:
        busy = wait_for(lambda: answered(503))
        assert busy.headers["Retry-After"] == "5"
        assert "try again in a moment" in busy.text
    finally:
        for sock in held:
            sock.close()
    assert wait_for(lambda: answered(200))
    # The abandoned uploads gave their slots back without a traceback.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_upload_limits_and_non_images(serve: Serve, tmp_path: Path, predictor: Predictor) -> None:
    client, sessions, _ = serve(max_upload_mb=0.05)
    token = csrf_token(client.get("/try").text)
    big = client.post_file("/try", {"csrf_token": token}, "big.png", b"\x89PNG" + b"0" * 80_000)
    assert big.status == 413
    assert "larger than the 0.05 MB upload limit" in big.text
    text = client.post_file("/try", {"csrf_token": token}, "notes.txt", b"hello, not an image")
    assert text.status == 400
    assert "not a PNG, JPEG or DICOM image" in text.text
    empty = client.post_file("/try", {"csrf_token": token}, "empty.png", b"")
    assert empty.status == 400
    png = png_of(radiograph(maximum=255, seed=5), tmp_path / "x.png")
    forged = client.post_file("/try", {"csrf_token": "0" * 64}, "x.png", png.read_bytes())
    assert forged.status == 403
    good = client.post_file("/try", {"csrf_token": token}, "x.png", png.read_bytes())
    assert good.status == 200
    [expected] = predictor.predict([load_display(png)])
    assert f"{expected.probability:.6f}" in good.text
    assert "data:image/png;base64," in good.text
    assert queue.counts(sessions)["instances"] == dict.fromkeys(
        ("queued", "processing", "done", "skipped", "failed"), 0
    )


def _banner(page: str) -> np.ndarray:
    encoded = re.search(r'id="banner" src="data:image/png;base64,([^"]+)"', page)
    assert encoded is not None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded.group(1)))).convert("RGB"))


def test_a_flagged_upload_shows_the_evidence_over_the_image(
    serve: Serve, tmp_path: Path, predictor: Predictor
) -> None:
    client, _, _ = serve()
    token = csrf_token(client.get("/try").text)
    pages = {}
    for seed in range(12):
        png = png_of(radiograph(rows=120, columns=90, maximum=255, seed=seed), tmp_path / "u.png")
        [prediction] = predictor.predict([load_display(png)])
        if prediction.label.value not in pages:
            page = client.post_file("/try", {"csrf_token": token}, "u.png", png.read_bytes())
            assert page.status == 200
            pages[prediction.label.value] = (page.text, prediction)
    flagged_page, flagged = pages["fracture"]
    negative_page, _ = pages["no_fracture"]
    assert flagged.region is not None
    assert f'data-box="{",".join(map(str, flagged.region.box))}"' in flagged_page
    assert 'id="trial-region"' not in negative_page

    def tinted(picture: np.ndarray) -> int:
        """Pixels of the radiograph (below the banner) coloured red to orange."""
        rgb = picture[picture.shape[0] - 120 :, :90].astype(int)
        return int(((rgb[..., 0] - rgb[..., 2] > 40) & (rgb[..., 0] >= rgb[..., 1])).sum())

    assert tinted(_banner(flagged_page)) > 50  # the evidence, blended in
    assert tinted(_banner(negative_page)) == 0  # grey only


def test_token_protects_everything_but_healthz(serve: Serve) -> None:
    client, _, _ = serve(token=TOKEN)
    for path in ("/", "/results", "/try", "/metrics"):
        refused = client.get(path)
        assert refused.status == 401, path
        assert refused.headers["www-authenticate"].startswith("Basic")
    assert client.get("/healthz").status == 200
    bearer = WebClient(client.base, {"Authorization": f"Bearer {TOKEN}"})
    assert bearer.get("/").status == 200
    basic = base64.b64encode(f"any:{TOKEN}".encode()).decode()
    assert WebClient(client.base, {"Authorization": f"Basic {basic}"}).get("/metrics").status == 200
    wrong = WebClient(client.base, {"Authorization": "Bearer not-the-token"})
    assert wrong.get("/").status == 401


def test_basic_auth_with_username_and_password(serve: Serve) -> None:
    client, _, _ = serve(username="radiology", password="correct horse")
    good = base64.b64encode(b"radiology:correct horse").decode()
    bad = base64.b64encode(b"radiology:wrong password").decode()
    assert WebClient(client.base, {"Authorization": f"Basic {good}"}).get("/").status == 200
    assert WebClient(client.base, {"Authorization": f"Basic {bad}"}).get("/").status == 401
    assert WebClient(client.base, {"Authorization": "Basic !!!"}).get("/").status == 401


def test_serve_refuses_a_public_address_without_auth(tmp_path: Path, tiny_bundle: Path) -> None:
    sections = base_sections(tmp_path, tiny_bundle)
    sections["web"] = {"host": "0.0.0.0", "port": free_port()}
    done = osteoflag("serve", config=write_config(tmp_path, sections), timeout=60)
    assert done.returncode == 2
    assert "web.host" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_taken_port_is_an_error_naming_web_host(tmp_path: Path) -> None:
    blocker = WebServer(_empty_app(), make_settings(tmp_path).web)
    blocker.start()
    try:
        settings = make_settings(tmp_path, web={"port": blocker.port})
        with pytest.raises(OsteoflagError, match=f"web.host 127.0.0.1 port {blocker.port}"):
            WebServer(_empty_app(), settings.web).start()
    finally:
        blocker.stop()
