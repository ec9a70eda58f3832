"""Our objects in a real viewer: OHIF (pinned npm build) against Orthanc's DICOMweb.

osteoflag's SR, presentation state and summary image of two DX radiographs are delivered
into Orthanc by the sender (C-STORE), one image flagged with a region, one not flagged.
OHIF is served with a same-origin proxy to Orthanc's ``/dicom-web`` and opened in Debian's
chromium, headless, through Playwright. The flagged SR must draw its region, as a
``DICOMSRDisplay`` annotation named by the SR's Tracking UID, over the source image at the
box's pixel coordinates; the not-flagged SR must open without the loader error that
broke the viewport before (``TypeError ... 'ReferencedSOPSequence'``), showing its source
with the whole-image group drawn along the border. Screenshots go to a
temporary folder, or ``$OSTEOFLAG_SCREENSHOTS`` (``docs/screenshots`` for the docs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from osteoflag.config import parse_settings
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.inference.labels import Label
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.sender import send_pending
from osteoflag.pacs.sr_read import read_result
from testkit.net import free_port
from tests.helpers.ohif import app_config, ohif_dist
from tests.helpers.proxy import reverse_proxy
from tests.helpers.rows import produce_for
from tests.orthanc_sr import Orthanc
from tests.sr_fixtures import make_dx

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
MODEL = ModelIdentity("osteoflag-vgg16-lgbm", "1.2.0", "0f" * 32, 0.42)
REGION = Region(peak=(90, 140), box=(60, 100, 140, 190))
TIMEOUT_MS = 60_000
# Read the annotation OHIF drew: its tool, image and points in image pixels.
ANNOTATION_JS = """(uid) => {
  const tools = window.cornerstoneTools, core = window.cornerstone;
  const annotation = tools && tools.annotation.state.getAnnotation(uid);
  if (!annotation) return null;
  const imageId = annotation.metadata.referencedImageId;
  const points = annotation.data.handles.points.map(
    (p) => Array.from(core.utilities.worldToImageCoords(imageId, p)));
  return {tool: annotation.metadata.toolName, imageId, points};
}"""
# The image ids the viewports show, once one is rendered (null until then).
IMAGES_JS = """() => {
  const ids = (window.cornerstone ? window.cornerstone.getRenderingEngines() : [])
    .flatMap((engine) => engine.getViewports())
    .map((viewport) => viewport.getCurrentImageId && viewport.getCurrentImageId())
    .filter(Boolean);
  return ids.length ? ids : null;
}"""


@dataclass(frozen=True)
class Delivered:
    """One source image in Orthanc with the SR osteoflag sent back for it."""

    study_uid: str
    source_uid: str
    sr_series_uid: str
    tracking_uid: str | None


def _deliver(
    orthanc: Orthanc, folder: Path, result: Classification, region: Region | None
) -> Delivered:
    source = make_dx(rows=320, columns=256, body_part="WRIST", seed=len(str(folder)))
    path = folder / "source.dcm"
    source.save_as(path, enforce_file_format=True)
    orthanc.upload(path.read_bytes())
    table = {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    settings = parse_settings(
        {
            "storage": {"path": str(folder / "var"), "database_url": "sqlite:///var/db.sqlite"},
            "destinations": [table],
        },
        folder,
    )
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        rows = produce_for(session, source, result, MODEL, settings, region)
        session.commit()
        sr_path = next(row.file_path for row in rows if row.kind == "sr")
    assert send_pending(sessions, settings).sent == len(rows)
    engine.dispose()
    sr = pydicom.dcmread(sr_path)
    return Delivered(
        str(source.StudyInstanceUID),
        str(source.SOPInstanceUID),
        str(sr.SeriesInstanceUID),
        read_result(sr).tracking_uid,
    )


@dataclass(frozen=True)
class Viewer:
    url: str
    flagged: Delivered
    negative: Delivered


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    dist = ohif_dist()
    folder = tmp_path_factory.mktemp("ohif")
    orthanc = Orthanc(folder / "orthanc", "OSTEOFLAG", free_port(), dicomweb=True)
    orthanc.start()
    try:
        flagged_folder, negative_folder = folder / "flagged", folder / "negative"
        flagged_folder.mkdir()
        negative_folder.mkdir()
        flagged = _deliver(orthanc, flagged_folder, Classification(Label.FRACTURE, 0.87), REGION)
        negative = _deliver(orthanc, negative_folder, Classification(Label.NO_FRACTURE, 0.1), None)
        with reverse_proxy(
            orthanc.base_url,
            static=dist,
            forward="/dicom-web",
            rewrite_upstream=True,
            overrides=lambda base: {"/app-config.js": app_config(base)},
        ) as url:
            yield Viewer(url, flagged, negative)
    finally:
        orthanc.stop()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: never the work tree unless asked for."""
    chosen = os.environ.get("OSTEOFLAG_SCREENSHOTS")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(
        "window.localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
    )
    page = context.new_page()
    console: list[str] = []

    def keep(message: ConsoleMessage) -> None:
        console.append(message.text)

    page.on("console", keep)
    page.on("pageerror", lambda error: console.append(str(error)))
    yield page, console
    context.close()


def _open(page: Page, viewer: Viewer, delivered: Delivered) -> None:
    page.goto(
        f"{viewer.url}/viewer?StudyInstanceUIDs={delivered.study_uid}"
        f"&initialSeriesInstanceUID={delivered.sr_series_uid}"
    )


def _poll(page: Page, script: str, arg: object = None) -> object:
    """Evaluate ``script`` until it returns something truthy (OHIF state can throw while
    the page navigates), within the test's deadline."""
    handle = page.wait_for_function(
        f"(arg) => {{ try {{ return ({script})(arg); }} catch (e) {{ return null; }} }}",
        arg=arg,
        timeout=TIMEOUT_MS,
        polling=250,
    )
    return handle.json_value()


def test_flagged_sr_draws_its_region_over_the_source_image(
    viewer: Viewer, page: tuple[Page, list[str]], screenshots: Path
) -> None:
    browser_page, _ = page
    flagged = viewer.flagged
    assert flagged.tracking_uid is not None
    _open(browser_page, viewer, flagged)

    selector = f'svg.svg-layer g[data-annotation-uid="{flagged.tracking_uid}"]'
    browser_page.wait_for_selector(selector, state="attached", timeout=TIMEOUT_MS)
    drawn = _poll(browser_page, ANNOTATION_JS, flagged.tracking_uid)
    assert isinstance(drawn, dict)
    assert drawn["tool"] == "DICOMSRDisplay"
    assert flagged.source_uid in drawn["imageId"]
    xs = [point[0] for point in drawn["points"]]
    ys = [point[1] for point in drawn["points"]]
    x0, y0, x1, y1 = REGION.box  # first and last pixel: outlined along their outer edges
    assert min(xs) == pytest.approx(x0, abs=0.5) and max(xs) == pytest.approx(x1 + 1, abs=0.5)
    assert min(ys) == pytest.approx(y0, abs=0.5) and max(ys) == pytest.approx(y1 + 1, abs=0.5)
    browser_page.screenshot(path=str(screenshots / "ohif-flagged-sr.png"))


def test_not_flagged_sr_opens_without_the_loader_error(
    viewer: Viewer, page: tuple[Page, list[str]], screenshots: Path
) -> None:
    browser_page, console = page
    negative = viewer.negative
    _open(browser_page, viewer, negative)

    browser_page.wait_for_selector(
        '[data-cy="study-browser-thumbnail-no-image"]', state="attached", timeout=TIMEOUT_MS
    )
    assert negative.tracking_uid is not None
    selector = f'svg.svg-layer g[data-annotation-uid="{negative.tracking_uid}"]'
    browser_page.wait_for_selector(selector, state="attached", timeout=TIMEOUT_MS)
    images = _poll(browser_page, IMAGES_JS)
    assert isinstance(images, list) and any(negative.source_uid in image for image in images)
    assert not [line for line in console if "ReferencedSOPSequence" in line]
    assert browser_page.get_by_text("Something went wrong").count() == 0
    browser_page.screenshot(path=str(screenshots / "ohif-not-flagged-sr.png"))
