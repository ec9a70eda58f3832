"""Feedback on a real uvicorn server and real SQLite: who may record it, what is stored, the
live agreement on the dashboard, and ``feedback export`` from storage."""

from __future__ import annotations

import base64
import csv
import json
import os
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db import feedback, queue
from osteoflag.db.engine import make_engine, migrate, reading, session_factory
from osteoflag.db.models import Feedback, FeedbackLabel, Instance
from osteoflag.errors import UsageError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.validation.export import export_feedback
from osteoflag.web.app import create_app
from osteoflag.web.server import WebServer
from testkit.daemon import base_sections, osteoflag, write_config
from tests.conftest import make_settings
from tests.helpers.rows import received
from tests.helpers.web import WebClient, csrf_token

USER, PASSWORD = "reader", "pw-for-tests"


def _done(sessions: sessionmaker[Session], folder: Path, labels: list[str]) -> list[int]:
    """Instances classified with ``labels``, each with a real file in ``folder``."""
    paths = [folder / f"{n}.dcm" for n in range(len(labels))]
    for path in paths:
        path.write_bytes(b"\0" * 128 + b"DICM")
    received(sessions, [str(path) for path in paths])
    claimed = queue.claim_instances(sessions, "test", len(labels), timedelta(minutes=5))
    with sessions() as session:
        for row, label in zip(claimed, labels, strict=True):
            assert queue.complete(
                session, row.id, "test", queue.Result(0.7, label, 0.5, "m@1", 10.0)
            )
        session.commit()
    return [row.id for row in claimed]


@pytest.fixture
def server(
    tmp_path: Path, tiny_bundle: Path
) -> Iterator[tuple[str, sessionmaker[Session], list[int]]]:
    settings = make_settings(tmp_path, web={"port": 0, "username": USER, "password": PASSWORD})
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    ids = _done(sessions, tmp_path, ["fracture", "fracture", "no_fracture", "no_fracture"])
    predictor = Predictor(load_bundle(tiny_bundle), threads=1, batch_size=1)
    app = create_app(settings, sessions, predictor, liveness=lambda: {}, wake_worker=lambda: None)
    web = WebServer(app, settings.web)
    web.start()
    try:
        yield f"http://127.0.0.1:{web.port}", sessions, ids
    finally:
        web.stop()


def _client(base: str, user: str = USER, password: str = PASSWORD) -> WebClient:
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return WebClient(base, {"Authorization": f"Basic {basic}"})


def _record(client: WebClient, instance_id: int, label: str, note: str = "") -> int:
    token = csrf_token(client.get(f"/results/{instance_id}").text)
    fields = {"csrf_token": token, "label": label, "note": note}
    return client.post_form(f"/results/{instance_id}/feedback", fields).status


def test_recorded_with_user_and_latest_counts(
    server: tuple[str, sessionmaker[Session], list[int]],
) -> None:
    base, sessions, ids = server
    client = _client(base)
    assert _record(client, ids[0], "no_fracture") == 303
    assert _record(client, ids[0], "fracture", "corrected after CT") == 303  # latest wins
    assert _record(client, ids[1], "no_fracture") == 303  # the model said fracture: a FP
    assert _record(client, ids[2], "no_fracture") == 303
    assert _record(client, ids[3], "unsure") == 303
    with reading(sessions) as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
        assert [(r.recorded_by, r.label) for r in rows][:2] == [
            (USER, FeedbackLabel.NO_FRACTURE),
            (USER, FeedbackLabel.FRACTURE),
        ]
        assert rows[1].note == "corrected after CT"
    agreement = feedback.agreement(sessions)
    assert (agreement.tp, agreement.fn, agreement.fp, agreement.tn) == (1, 0, 1, 1)
    assert agreement.unsure == 1 and agreement.specificity == pytest.approx(0.5)
    page = client.get("/").text
    assert 'id="agreement-n">3<' in page
    assert "0.500 (1 of 2)" in page


def test_refused_without_csrf_or_a_valid_label(
    server: tuple[str, sessionmaker[Session], list[int]],
) -> None:
    base, sessions, ids = server
    client = _client(base)
    no_csrf = client.post_form(f"/results/{ids[0]}/feedback", {"label": "fracture"})
    assert no_csrf.status == 403
    assert _record(client, ids[0], "maybe") == 400
    assert _record(client, ids[0], "fracture", "a\x00b") == 400  # PostgreSQL cannot store it
    token = csrf_token(client.get(f"/results/{ids[0]}").text)
    missing = client.post_form("/results/999/feedback", {"csrf_token": token, "label": "fracture"})
    assert missing.status == 404
    assert feedback.agreement(sessions).n == 0


def test_unprotected_page_takes_no_feedback(tmp_path: Path, tiny_bundle: Path) -> None:
    settings = make_settings(tmp_path, web={"port": 0})
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    [instance_id] = _done(sessions, tmp_path, ["fracture"])
    predictor = Predictor(load_bundle(tiny_bundle), threads=1, batch_size=1)
    web = WebServer(
        create_app(settings, sessions, predictor, liveness=lambda: {}, wake_worker=lambda: None),
        settings.web,
    )
    web.start()
    try:
        client = WebClient(f"http://127.0.0.1:{web.port}")
        page = client.get(f"/results/{instance_id}").text
        assert 'id="feedback-form"' not in page and "Protect this page" in page
        token = csrf_token(client.get("/try").text)
        reply = client.post_form(
            f"/results/{instance_id}/feedback", {"csrf_token": token, "label": "fracture"}
        )
        assert reply.status == 403
    finally:
        web.stop()


def test_export_copies_files_and_counts_the_missing(
    server: tuple[str, sessionmaker[Session], list[int]], tmp_path: Path
) -> None:
    base, sessions, ids = server
    client = _client(base)
    for instance_id, label in zip(
        ids, ["fracture", "no_fracture", "unsure", "fracture"], strict=True
    ):
        assert _record(client, instance_id, label) == 303
    with reading(sessions) as session:
        gone = session.get(Instance, ids[3])
        assert gone is not None
        Path(gone.file_path).unlink()
    counts = export_feedback(sessions, tmp_path / "out")
    assert counts == {
        "cases": 3,
        "fracture": 1,
        "nofracture": 1,
        "unsure": 1,
        "files_missing": 1,
    }
    with (tmp_path / "out" / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["fracture", "nofracture", "unsure"]
    assert (tmp_path / "out" / rows[0]["file"]).read_bytes().endswith(b"DICM")
    assert (tmp_path / "out" / rows[0]["file"]).stat().st_mode & 0o777 == 0o600
    with pytest.raises(UsageError, match="already exists"):
        export_feedback(sessions, tmp_path / "out")


def test_validate_on_an_export_before_any_reading_says_there_are_no_rows(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    config = write_config(tmp_path, base_sections(tmp_path, tiny_bundle))
    out = tmp_path / "fb"
    exported = osteoflag("feedback", "export", "--out", str(out), config=config)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["cases"] == 0
    done = osteoflag("validate", "--data", str(out), "--json", config=config)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"osteoflag: no labelled rows in {out / 'labels.csv'}"
    )


@pytest.fixture
def labelled(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A queue with one classified instance and its reading, its file under ``tmp_path``."""
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    [instance_id] = _done(sessions, tmp_path, ["fracture"])
    feedback.record(sessions, instance_id, FeedbackLabel.FRACTURE, None, USER)
    yield sessions
    engine.dispose()


def test_export_writes_nothing_through_a_symbolic_link(
    labelled: sessionmaker[Session], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(elsewhere / "new")
    with pytest.raises(UsageError, match="already exists"):
        export_feedback(labelled, dangling)
    planted = tmp_path / f".out.partial-{socket.gethostname()}-{os.getpid()}"  # its staging
    planted.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UsageError, match=r"^--out .*out: cannot be written: File exists"):
        export_feedback(labelled, tmp_path / "out")
    assert list(elsewhere.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_a_study_uid_that_is_no_uid_is_not_the_exported_group(
    labelled: sessionmaker[Session], tmp_path: Path
) -> None:
    hostile = '=HYPERLINK("http://x.example","open")'  # a spreadsheet formula, not a UID
    with labelled() as session:
        instance = session.scalars(select(Instance)).one()
        instance.study_instance_uid = hostile
        sop_instance_uid = instance.sop_instance_uid
        session.commit()
    export_feedback(labelled, tmp_path / "out")
    with (tmp_path / "out" / "labels.csv").open() as fh:
        [row] = list(csv.DictReader(fh))
    assert row["group"] == sop_instance_uid


def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path: Path, tiny_bundle: Path) -> None:
    config = write_config(tmp_path, base_sections(tmp_path, tiny_bundle))
    (tmp_path / "a-file").write_text("not a folder")
    for out, reason in [("a-file/fb", "cannot be written"), ("gone/..", "already exists")]:
        exported = osteoflag("feedback", "export", "--out", str(tmp_path / out), config=config)
        assert exported.returncode == 2
        [line] = exported.stderr.strip().splitlines()
        assert line.startswith("osteoflag: --out ") and reason in line
    assert not (tmp_path / "gone").exists()
