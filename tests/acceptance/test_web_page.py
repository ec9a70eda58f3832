"""The operator page in a real browser: Debian's chromium, headless, driven by Playwright.

One daemon (subprocess, the default bundle, a destination that is down) serves every test; the
classified image and the "try an image" upload are a real forearm radiograph with a fracture
(``tests/data/osteoai-fracture.jpg``), so the screenshots show a real result and its region;
screenshots of the dashboard, a result and "try an image" land in a temporary folder, or in
``$OSTEOFLAG_SCREENSHOTS`` (``OSTEOFLAG_SCREENSHOTS=docs/screenshots`` refreshes the README's).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian

from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, base_sections, osteoflag, write_config
from testkit.inference_data import dataset, save
from testkit.inference_data import radiograph as grey_radiograph
from testkit.net import free_port, port_open
from testkit.wait import wait_for
from tests.helpers.dicom import (
    ACCESSION_NUMBER,
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    radiograph,
    write_in_syntax,
)

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "models" / "default"
FRACTURE_JPEG = ROOT / "tests" / "data" / "osteoai-fracture.jpg"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDENTIFIERS = (
    PATIENT_NAME,
    PATIENT_NAME.replace("^", " "),
    PATIENT_ID,
    PATIENT_BIRTH_DATE,
    ACCESSION_NUMBER,
)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: never the work tree unless asked for."""
    chosen = os.environ.get("OSTEOFLAG_SCREENSHOTS")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")


@dataclass(frozen=True)
class Served:
    daemon: DaemonProcess
    url: str
    folder: Path

    def store(self, *paths: Path) -> None:
        outcomes = send_c_store(
            list(paths), Peer("127.0.0.1", self.daemon.port, "OSTEOFLAG"), "MOD"
        )
        assert all(outcome.ok for outcome in outcomes), outcomes

    def rows(self, query: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.folder / "var" / "osteoflag.db") as db:
            return list(db.execute(query, args))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("web")
    web_port = free_port()
    sections = base_sections(folder, DEFAULT_BUNDLE)
    sections["web"] = {"port": web_port}
    sections["sender"] = {
        "interval_seconds": 1.0,
        "timeout_seconds": 2.0,
        "backoff_base_seconds": 1.0,
        "backoff_cap_seconds": 2.0,
    }
    sections["destinations"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}]
    daemon = DaemonProcess(write_config(folder, sections), sections["listener"]["port"])
    with daemon:
        wait_for(lambda: port_open(web_port), timeout=30)
        yield Served(daemon, f"http://127.0.0.1:{web_port}", folder)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def classified(served: Served) -> dict[str, int]:
    """One real radiograph (done, with SR and summary) and one broken one (failed)."""
    good = write_in_syntax(_real_radiograph(), ExplicitVRLittleEndian, served.folder / "good.dcm")
    broken = radiograph(seed=12)
    broken.PixelData = broken.PixelData[:10]
    broken_path = served.folder / "broken.dcm"
    broken.save_as(broken_path, enforce_file_format=True)
    served.store(good, broken_path)
    ids: dict[str, int] = {}
    for name, path in (("done", good), ("failed", broken_path)):
        uid = str(dcmread(path).SOPInstanceUID)
        ids[name] = wait_for(
            lambda uid=uid, name=name: next(
                (
                    int(i)
                    for i, s in served.rows(
                        "SELECT id, state FROM instances WHERE sop_instance_uid = ?", uid
                    )
                    if s == name
                ),
                None,
            ),
            timeout=60,
        )
    wait_for(lambda: served.rows("SELECT 1 FROM outbound WHERE last_error IS NOT NULL"), 60)
    return ids


def _real_radiograph() -> Dataset:
    """The fracture JPEG as an 8-bit DX carrying the test patient's identifiers."""
    with Image.open(FRACTURE_JPEG) as picture:
        grey = np.asarray(picture.convert("L"))
    ds = radiograph(rows=grey.shape[0], columns=grey.shape[1], seed=11, body_part="ARM")
    ds.PixelData = grey.tobytes()
    return ds


def _no_identifiers(page: Page) -> None:
    html = page.content()
    for value in IDENTIFIERS:
        assert value not in html
    assert "For research use only. Not for diagnostic use." in page.inner_text("body")


def _count(page: Page, state: str) -> int:
    return int(page.inner_text(f"#count-{state}"))


def test_dashboard_counts_change_after_a_c_store(
    served: Served, classified: dict[str, int], page: Page, screenshots: Path
) -> None:
    page.goto(served.url + "/")
    before = _count(page, "done")
    path = write_in_syntax(radiograph(seed=13), ExplicitVRLittleEndian, served.folder / "new.dcm")
    served.store(path)

    def done_after_reload() -> bool:
        page.reload()
        return _count(page, "done") == before + 1

    wait_for(done_after_reload, timeout=60, interval=0.5)
    assert int(page.inner_text("#hour-received")) >= 3
    assert "osteoflag-" in page.inner_text("#model")
    destinations = page.inner_text("#destinations")
    assert "PACS@127.0.0.1" in destinations
    _no_identifiers(page)
    page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)


def test_result_page_shows_summary_image_and_sr(
    served: Served, classified: dict[str, int], page: Page, screenshots: Path
) -> None:
    page.goto(served.url + "/results")
    page.click(f"tr[data-id='{classified['done']}'] a")
    page.wait_for_selector("#sr")
    assert page.inner_text("#state") == "done"
    assert "Fracture" in page.inner_text("#sr")
    wait_for(lambda: page.eval_on_selector("#summary", "img => img.complete"), timeout=10)
    assert page.eval_on_selector("#summary", "img => img.naturalWidth") > 0
    _no_identifiers(page)
    page.screenshot(path=str(screenshots / "result.png"), full_page=True)


def test_failed_instance_is_requeued_from_the_page(
    served: Served, classified: dict[str, int], page: Page
) -> None:
    instance_id = classified["failed"]
    page.goto(f"{served.url}/results/{instance_id}")
    assert page.inner_text("#state") == "failed"
    assert "Pixel Data" in page.inner_text("#reason")
    page.click("#requeue")
    assert page.inner_text("#requeued") == "1 instance(s) re-queued."
    # Re-queued, the worker tries again and fails it a second time: two "failed" events.
    wait_for(
        lambda: (
            served.rows(
                "SELECT COUNT(*) FROM events WHERE instance_id = ? AND action = 'failed'",
                instance_id,
            )[0][0]
            == 2
        ),
        timeout=60,
    )


def test_try_an_image_matches_osteoflag_infer(
    served: Served, page: Page, screenshots: Path
) -> None:
    dicom = save(dataset(grey_radiograph(seed=22), bits_stored=12), served.folder / "try.dcm")
    jpeg = served.folder / "fracture.jpg"
    jpeg.write_bytes(FRACTURE_JPEG.read_bytes())
    done = osteoflag("infer", str(jpeg), str(dicom), "--json", config=served.daemon.config)
    assert done.returncode == 0, done.stderr
    expected = {Path(r["file"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    before = served.rows("SELECT COUNT(*) FROM instances")
    for path in (dicom, jpeg):
        page.goto(served.url + "/try")
        page.set_input_files("#image", str(path))
        page.click("#classify")
        page.wait_for_selector("#trial-probability")
        record = expected[path.name]
        assert page.inner_text("#trial-probability") == f"{record['probability']:.6f}"
        assert page.inner_text("#trial-label") == record["label"]
        assert page.eval_on_selector("#banner", "img => img.naturalWidth") > 0
        if "region" in record:  # the real fracture: its box is shown as infer prints it
            box = ",".join(str(v) for v in record["region"]["box"])
            assert page.get_attribute("#trial-region", "data-box") == box
        else:
            assert page.query_selector("#trial-region") is None
        _no_identifiers(page)
    assert "region" in expected[jpeg.name]  # the default bundle flags it
    assert served.rows("SELECT COUNT(*) FROM instances") == before
    page.screenshot(path=str(screenshots / "try-an-image.png"), full_page=True)
