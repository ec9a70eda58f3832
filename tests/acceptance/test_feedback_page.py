"""Radiologists' feedback in a real browser (Debian's chromium via Playwright): readings
recorded on two results, the dashboard's live agreement, then ``feedback export`` read as it
is by ``validate``."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, base_sections, osteoflag, write_config
from testkit.net import free_port, port_open
from testkit.wait import wait_for
from tests.acceptance.test_web_page import CHROMIUM, CHROMIUM_ARGS
from tests.helpers.dicom import radiograph, write_in_syntax

USER, PASSWORD = "dr-reader", "correct horse battery"


def _rows(folder: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(folder / "var" / "osteoflag.db") as db:
        return list(db.execute(query))


@pytest.fixture
def served(tmp_path: Path, tiny_bundle: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A protected daemon with two classified radiographs: URL, config, label by instance id."""
    web_port = free_port()
    sections = base_sections(tmp_path, tiny_bundle)
    sections["web"] = {"port": web_port, "username": USER, "password": PASSWORD}
    config = write_config(tmp_path, sections)
    paths = [
        write_in_syntax(radiograph(seed=s), ExplicitVRLittleEndian, tmp_path / f"{s}.dcm")
        for s in (21, 22)
    ]
    with DaemonProcess(config, sections["listener"]["port"]) as daemon:
        outcomes = send_c_store(paths, Peer("127.0.0.1", daemon.port, "OSTEOFLAG"), "MOD")
        assert all(outcome.ok for outcome in outcomes)
        uids = [str(dcmread(p).SOPInstanceUID) for p in paths]
        wait_for(
            lambda: (
                _rows(tmp_path, "SELECT COUNT(*) FROM instances WHERE state = 'done'") == [(2,)]
            ),
            timeout=120,
        )
        wait_for(lambda: port_open(web_port), timeout=30)
        labels = {
            str(i): str(label)
            for uid in uids
            for i, label in _rows(
                tmp_path, f"SELECT id, label FROM instances WHERE sop_instance_uid = '{uid}'"
            )
        }
        yield f"http://127.0.0.1:{web_port}", config, labels


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
        yield context.new_page()
        browser.close()


def test_readings_recorded_agreement_shown_exported_and_validated(
    served: tuple[str, Path, dict[str, str]], page: Page, tmp_path: Path
) -> None:
    url, config, model_labels = served
    first, second = sorted(model_labels, key=int)
    readings = {first: "fracture", second: "no_fracture"}
    for instance_id, reading in readings.items():
        page.goto(f"{url}/results/{instance_id}")
        page.check(f"#feedback-{reading}")
        page.fill("#feedback-note", f"read by the test, case {instance_id}")
        page.click("#feedback-submit")
        page.wait_for_selector("#feedback-recorded")
        row = page.inner_text("#feedback tbody tr")
        assert reading.replace("_", " ") in row and USER in row
    stored = _rows(tmp_path, "SELECT instance_id, label, recorded_by FROM feedback ORDER BY id")
    assert stored == [(int(i), r, USER) for i, r in readings.items()]

    agree = [model_labels[i] == r for i, r in readings.items()]
    page.goto(f"{url}/")
    assert page.inner_text("#agreement-n") == "2"
    expected_sensitivity = "1.000" if agree[0] else "0.000"
    assert page.inner_text("#agreement-sensitivity").startswith(expected_sensitivity)
    figures = page.inner_text("#figures")
    assert "grouped cross-validation" in figures and "another source" in figures

    out = tmp_path / "labelled"
    done = osteoflag("feedback", "export", "--out", str(out), config=config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cases"] == 2
    with (out / "labels.csv").open() as fh:
        exported = list(csv.DictReader(fh))
    assert [row["label"] for row in exported] == ["fracture", "nofracture"]
    assert all((out / row["file"]).is_file() for row in exported)

    validated = osteoflag("validate", "--data", str(out), "--json", config=config)
    assert validated.returncode == 0, validated.stderr
    result = json.loads(validated.stdout)
    (tn, _), (fn, tp) = result["confusion"]
    assert result["n"] == 2 and tp + fn == 1
    assert tp == int(agree[0]) and tn == int(agree[1])
