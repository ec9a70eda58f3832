"""Drift watch end to end: a bundle given a reference by ``osteoflag drift-reference``, a real
daemon fed over DICOM, and ``/metrics`` and the dashboard read over HTTP. In-distribution
input stays under the alert rule; another body part mix, and inverted images, go past it."""

from __future__ import annotations

import shutil
import sqlite3
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from osteoflag.inference.bundle import load_bundle
from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, base_sections, osteoflag, write_config
from testkit.net import free_port, port_open
from testkit.wait import wait_for
from tests.helpers.site_data import write_site

WINDOW = 100
#: A clinic's mix, 30% fractures: the same in the reference and in every window.
FRACTURES, NO_FRACTURES = 30, 70


def _done(folder: Path) -> int:
    with sqlite3.connect(folder / "var" / "osteoflag.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM instances WHERE state = 'done'").fetchone()[0])


def _drift(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics") as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("osteoflag_drift"):
                label = sample.labels.get("statistic")
                values[f"{sample.name}:{label}" if label else sample.name] = sample.value
    return values


@pytest.mark.parametrize("shift", ["body_part", "inverted"])
def test_shifted_input_raises_the_alert_in_distribution_does_not(
    tmp_path: Path, tiny_bundle: Path, shift: str
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    write_site(tmp_path / "reference", per_class=90, nofracture=210, size=96, seed=1)
    web_port = free_port()
    sections = base_sections(tmp_path, bundle)
    sections["web"] = {"port": web_port}
    sections["drift"] = {"window": WINDOW, "min_results": 80}
    config = write_config(tmp_path, sections)
    made = osteoflag(
        "drift-reference",
        "--bundle",
        str(bundle),
        "--data",
        str(tmp_path / "reference" / "images"),
        "--labels",
        str(tmp_path / "reference" / "labels.csv"),
        config=config,
    )
    assert made.returncode == 0, made.stderr
    assert "drift_reference.json" in load_bundle(bundle).manifest.files

    write_site(tmp_path / "same", FRACTURES, nofracture=NO_FRACTURES, size=96, seed=2)
    shifted = {"body_part": {"parts": ("CHEST",)}, "inverted": {"inverted": True}}[shift]
    write_site(tmp_path / "shifted", FRACTURES, nofracture=NO_FRACTURES, size=96, seed=3, **shifted)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{web_port}"
    with DaemonProcess(config, sections["listener"]["port"]) as daemon:
        wait_for(lambda: port_open(web_port), timeout=30)
        peer = Peer("127.0.0.1", daemon.port, "OSTEOFLAG")
        for name, expected in (("same", WINDOW), ("shifted", 2 * WINDOW)):
            files = sorted((tmp_path / name / "images").iterdir())
            assert all(o.ok for o in send_c_store(files, peer, "MOD"))
            wait_for(lambda expected=expected: _done(tmp_path) == expected, timeout=180)
            values = _drift(url)
            assert values["osteoflag_drift_window_results"] == WINDOW
            if name == "same":
                assert values["osteoflag_drift_alert"] == 0.0, values
                assert values["osteoflag_drift_score_psi"] < 0.25
                assert values["osteoflag_drift_share_change:body_part"] < 0.25
        assert values["osteoflag_drift_alert"] == 1.0, values
        if shift == "body_part":
            assert values["osteoflag_drift_share_change:body_part"] == 1.0
        else:
            assert values["osteoflag_drift_score_psi"] >= 0.25
        with urllib.request.urlopen(url + "/") as reply:
            page = reply.read().decode()
        assert 'id="drift-alert" class="bad"' in page
